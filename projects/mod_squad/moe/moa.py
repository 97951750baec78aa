"""Mixture of attention heads (MoA), as in the Mod-Squad ViT.

Each of E head experts has its own query projection ``(C, hd)`` and output projection
``(hd, C)``; each token's task router picks k of them. Key and value are one shared
head of width hd (multi-query attention), so a token's k query heads all attend over
the same keys and values, and the output of a token is the gate-weighted sum over its k
heads of ``attention_output @ o_proj[e]``.
"""
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import RouterConfig
from .experts import INIT_STD, grouped_linear
from .routed_layer import RoutedLayer


class MoAttention(RoutedLayer):
    """Mixture of attention heads with a shared key/value head.

    Parameters: ``router.*`` (see :class:`~.router.TaskRouter`), ``q_proj (E, C, hd)``,
    ``q_bias (E, hd)`` (with ``qkv_bias``), ``kv_proj`` (``nn.Linear(C, 2 * hd)``, key
    then value), ``o_proj (E, hd, C)``, ``o_bias (C,)``.

    Args:
        embed_dims (int): Token width C.
        num_experts (int): Head experts E.
        top_k (int): Heads k per token (every task's default; a task may run fewer
            or a subset of the heads, see ``router.set_compute``).
        head_dims (int): Head width hd.
        task_names (Sequence[str]): Tasks with their own router.
        qkv_bias (bool): Biases of the query and key/value projections.
        attn_drop (float): Dropout on the attention weights.
        proj_drop (float): Dropout on the output.
        router_cfg (RouterConfig, optional): See :class:`~.routed_layer.RoutedLayer`;
            its ``impl`` picks the path of the per-expert projections.
    """
    #: The stacked per-expert tensors (see :func:`~.partial.train_experts`).
    EXPERT_STACKS = ('q_proj', 'q_bias', 'o_proj')

    def __init__(self,
                 embed_dims: int,
                 num_experts: int,
                 top_k: int,
                 head_dims: int,
                 task_names: Sequence[str],
                 qkv_bias: bool = True,
                 attn_drop: float = 0.,
                 proj_drop: float = 0.,
                 router_cfg: Optional[RouterConfig] = None):
        super().__init__(embed_dims, num_experts, top_k, task_names, router_cfg)
        self.embed_dims = embed_dims
        self.head_dims = head_dims
        self.q_proj = nn.Parameter(torch.empty(num_experts, embed_dims, head_dims))
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.empty(num_experts, head_dims))
        else:
            self.register_parameter('q_bias', None)
        self.kv_proj = nn.Linear(embed_dims, 2 * head_dims, bias=qkv_bias)
        self.o_proj = nn.Parameter(torch.empty(num_experts, head_dims, embed_dims))
        self.o_bias = nn.Parameter(torch.empty(embed_dims))
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """ViT initialisation: weights truncated normal (std 0.02), biases zero."""
        for w in (self.q_proj, self.kv_proj.weight, self.o_proj):
            nn.init.trunc_normal_(w, std=INIT_STD)
        for b in (self.q_bias, self.kv_proj.bias, self.o_bias):
            if b is not None:
                nn.init.zeros_(b)

    def expert_parameters(self) -> List[nn.Parameter]:
        """Query and output projections; the key/value head is shared."""
        stacks = (getattr(self, name) for name in self.EXPERT_STACKS)
        return [p for p in stacks if p is not None]

    def forward(self, x: torch.Tensor, task: str) -> torch.Tensor:
        """x: (B, N, C) tokens of ``task`` -> (B, N, C)."""
        B, N, C = x.shape
        tokens = x.reshape(B * N, C)
        route, dispatch = self.route(tokens, task)
        impl = self.router_cfg.impl
        # queries of the (token, head) slots: (B*N*k, hd)
        q = grouped_linear(tokens, self.q_proj, self.q_bias, dispatch, impl, gather=True)
        q = dispatch.scatter_slots(q)
        k, v = self.kv_proj(x).unsqueeze(1).chunk(2, dim=-1)  # (B, 1, N, hd) each
        # The shared key/value make the k heads of all N tokens one multi-query head
        # of N * k queries: rows ordered (token, head), as the slots; k is the
        # task's (possibly lowered) top-k, so fewer heads compute fewer queries.
        top_k = dispatch.top_k
        o = F.scaled_dot_product_attention(
            q.view(B, 1, N * top_k, self.head_dims).to(k.dtype), k, v,
            dropout_p=self.attn_drop if self.training else 0.)
        o = dispatch.gather_slots(o.reshape(B * N * top_k, self.head_dims))
        gates = dispatch.gather_slots(route.gates.reshape(-1, 1))
        y = grouped_linear(o, self.o_proj, None, dispatch, impl, scale=gates, reduce=True)
        y = y + self.o_bias.to(y.dtype)
        return self.proj_drop(y).view(B, N, C)

    def extra_repr(self) -> str:
        return (f'embed_dims={self.embed_dims}, head_dims={self.head_dims}, '
                f'impl={self.router_cfg.impl!r}')
