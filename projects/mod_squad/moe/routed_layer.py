"""Base of the task-routed layers: router, usage statistics and auxiliary losses."""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .config import RouterConfig
from .dispatch import TokenDispatch
from .losses import RouterAuxLoss
from .router import RouterOutput, TaskRouter
from .stats import ExpertUsage


def _in_backward() -> bool:
    """True while autograd runs, e.g. when activation checkpointing recomputes a
    forward: routing then must not be recorded a second time."""
    graph_task_id = getattr(torch._C, '_current_graph_task_id', None)
    return graph_task_id is not None and graph_task_id() != -1


class RoutedLayer(nn.Module):
    """Owns ``router`` (:class:`TaskRouter`), ``usage`` (:class:`ExpertUsage`) and,
    with enabled auxiliary losses, ``aux_loss`` (:class:`RouterAuxLoss`; else None).

    Args:
        in_features (int): Token width C seen by the router.
        num_experts (int): E.
        top_k (int): Experts per token (every task's default, see
            :meth:`TaskRouter.set_compute`).
        task_names (Sequence[str]): Tasks with their own router.
        router_cfg (RouterConfig, optional): Router, auxiliary losses and expert
            path (``impl``), kept as :attr:`router_cfg`. Defaults to
            ``RouterConfig()``.
    """

    def __init__(self,
                 in_features: int,
                 num_experts: int,
                 top_k: int,
                 task_names: Sequence[str],
                 router_cfg: Optional[RouterConfig] = None):
        super().__init__()
        self.router_cfg = router_cfg = router_cfg or RouterConfig()
        self.router = TaskRouter(in_features, num_experts, top_k, task_names, router_cfg)
        self.usage = ExpertUsage(len(task_names), num_experts)
        aux_cfg = router_cfg.aux_loss
        self.aux_loss = RouterAuxLoss(aux_cfg, len(task_names), num_experts) if (
            aux_cfg.enabled) else None

    @property
    def task_names(self) -> tuple:
        return self.router.task_names

    @property
    def num_experts(self) -> int:
        return self.router.num_experts

    @property
    def top_k(self) -> int:
        """The built k (the default of every task)."""
        return self.router.top_k

    def top_k_of(self, task: str) -> int:
        """Experts per token of ``task`` (:meth:`TaskRouter.set_compute`)."""
        return self.router.top_k_of(task)

    def enabled_experts_of(self, task: str) -> List[int]:
        """Experts ``task``'s router may choose (:meth:`TaskRouter.set_compute`)."""
        return self.router.enabled_experts_of(task)

    def expert_parameters(self) -> List[nn.Parameter]:
        """The per-expert parameters, each stacked along a leading ``(E, ...)``."""
        raise NotImplementedError

    def route(self, x: torch.Tensor, task: str) -> Tuple[RouterOutput, TokenDispatch]:
        """Route (N, C) tokens of ``task`` and sort them by expert; record usage and,
        when training with grad, the auxiliary-loss inputs, both from the
        dispatch's per-expert counts."""
        route = self.router(x, task)
        dispatch = TokenDispatch(route.indices, self.num_experts)
        t = self.router.task_index(task)
        recomputing = _in_backward()
        if not recomputing:
            self.usage.update(t, route, dispatch.counts)
        if self.aux_loss is not None and self.training and torch.is_grad_enabled():
            self.aux_loss.update(t, route, dispatch.counts, record=not recomputing)
        return route, dispatch


def routed_layers(model: nn.Module) -> Dict[str, RoutedLayer]:
    """The routed layers (MoE MLPs, MoAs) of ``model`` by name, in model order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, RoutedLayer)}
