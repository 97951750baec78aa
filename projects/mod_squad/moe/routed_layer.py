"""Base of the task-routed layers: router, usage statistics and auxiliary losses."""
from typing import Optional, Sequence

import torch
import torch.nn as nn

from .losses import MoEAuxLossConfig, RouterAuxLoss
from .router import RouterOutput, TaskRouter
from .stats import ExpertUsage


def _in_backward() -> bool:
    """True while autograd runs, e.g. when activation checkpointing recomputes a
    forward: routing then must not be recorded a second time."""
    graph_task_id = getattr(torch._C, '_current_graph_task_id', None)
    return graph_task_id is not None and graph_task_id() != -1


class RoutedLayer(nn.Module):
    """Owns ``router`` (:class:`TaskRouter`), ``usage`` (:class:`ExpertUsage`) and,
    with an enabled ``aux_cfg``, ``aux_loss`` (:class:`RouterAuxLoss`; else None).

    Args:
        in_features (int): Token width C seen by the router.
        num_experts (int): E.
        top_k (int): Experts per token.
        task_names (Sequence[str]): Tasks with their own router.
        router_hidden (int, optional): Hidden width of MLP routers; None: linear.
        noisy_gating (bool): Noisy top-k gating in training.
        renormalize (bool): Gates renormalised over the top-k.
        zero_init_router (bool): Zero-initialised routers.
        aux_cfg (MoEAuxLossConfig, optional): Auxiliary losses of this layer.
    """

    def __init__(self,
                 in_features: int,
                 num_experts: int,
                 top_k: int,
                 task_names: Sequence[str],
                 router_hidden: Optional[int] = None,
                 noisy_gating: bool = False,
                 renormalize: bool = False,
                 zero_init_router: bool = True,
                 aux_cfg: Optional[MoEAuxLossConfig] = None):
        super().__init__()
        self.router = TaskRouter(
            in_features,
            num_experts,
            top_k,
            task_names,
            hidden_features=router_hidden,
            noisy_gating=noisy_gating,
            renormalize=renormalize,
            zero_init=zero_init_router)
        self.usage = ExpertUsage(len(task_names), num_experts)
        self.aux_loss = RouterAuxLoss(aux_cfg, len(task_names), num_experts) if (
            aux_cfg is not None and aux_cfg.enabled) else None

    @property
    def task_names(self) -> tuple:
        return self.router.task_names

    @property
    def num_experts(self) -> int:
        return self.router.num_experts

    @property
    def top_k(self) -> int:
        return self.router.top_k

    def route(self, x: torch.Tensor, task: str) -> RouterOutput:
        """Route (N, C) tokens of ``task``; record usage and, when training with grad,
        the auxiliary-loss inputs."""
        route = self.router(x, task)
        t = self.router.task_index(task)
        recomputing = _in_backward()
        if not recomputing:
            self.usage.update(t, route)
        if self.aux_loss is not None and self.training and torch.is_grad_enabled():
            self.aux_loss.update(t, route, record=not recomputing)
        return route
