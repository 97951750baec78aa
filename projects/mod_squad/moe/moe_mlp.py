"""Mixture-of-experts MLP with per-task routers and dropless dispatch."""
from typing import List, Optional, Sequence

import torch
import torch.nn as nn

from .config import RouterConfig
from .experts import GroupedExperts
from .routed_layer import RoutedLayer


class MoEMLP(RoutedLayer):
    """Each token goes through the k experts its task's router picks; the output is
    the gate-weighted sum of their outputs. No capacity limit, no token dropped.

    Parameters: ``router.*`` (see :class:`~.router.TaskRouter`), ``experts.w1 (E, C, H)``,
    ``experts.b1 (E, H)``, ``experts.w2 (E, H, C)``, ``experts.b2 (E, C)``.

    Args:
        embed_dims (int): Token width C.
        num_experts (int): E.
        top_k (int): Experts k per token (every task's default; a task may run
            fewer or a subset of the experts, see ``router.set_compute``).
        hidden_features (int): Hidden width H of each expert (Mod-Squad: the dense MLP
            hidden / k, so that k experts cost one dense MLP).
        task_names (Sequence[str]): Tasks with their own router.
        act_layer (type): Expert activation. Defaults to ``nn.GELU``.
        drop (float): Dropout after the activation and on the output.
        router_cfg (RouterConfig, optional): See :class:`~.routed_layer.RoutedLayer`.
    """

    def __init__(self,
                 embed_dims: int,
                 num_experts: int,
                 top_k: int,
                 hidden_features: int,
                 task_names: Sequence[str],
                 act_layer: type = nn.GELU,
                 drop: float = 0.,
                 router_cfg: Optional[RouterConfig] = None):
        super().__init__(embed_dims, num_experts, top_k, task_names, router_cfg)
        self.embed_dims = embed_dims
        self.experts = GroupedExperts(
            num_experts, embed_dims, hidden_features, act_layer=act_layer, drop=drop)
        self.drop = nn.Dropout(drop)

    def expert_parameters(self) -> List[nn.Parameter]:
        return list(self.experts.parameters())

    def forward(self, x: torch.Tensor, task: str) -> torch.Tensor:
        """x: (..., C) tokens of ``task`` -> (..., C)."""
        tokens = x.reshape(-1, self.embed_dims)
        route, dispatch = self.route(tokens, task)
        y = self.experts(tokens, dispatch, route.gates, self.router_cfg.impl)
        return self.drop(y).view(x.shape)
