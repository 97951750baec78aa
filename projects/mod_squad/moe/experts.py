"""Experts with weights stacked along a leading expert dimension ``(E, in, out)``.

:func:`grouped_linear` runs each expert on its rows of a :class:`~.dispatch.TokenDispatch`
(gathering the tokens, scaling and summing the slots back into tokens on request), by
one of three paths:

- ``'loop'``: gather, one ``torch.addmm`` per expert, ``torch.cat``, scale, sum: the
  readable reference of the other paths. Keeps every gathered row for backward.
- ``'fused'``: the same per-expert matmuls in one autograd function that gathers,
  scales and scatters by index and keeps no ``(M, ...)`` tensor (:mod:`.fused`). The
  path on CPU and on GPUs without ``torch._grouped_mm``. Needs the per-expert counts on
  the host (a sync on CUDA), as the loop.
- ``'grouped_mm'``: one ``torch._grouped_mm`` call (PyTorch >= 2.8) with on-device
  offsets, no host sync. Chosen automatically on Hopper/Blackwell GPUs when the
  compute dtype is bf16 and the widths are 16-byte aligned.
"""
from typing import Optional

import torch
import torch.nn as nn

from .dispatch import TokenDispatch
from .fused import compute_dtype, fused_grouped_linear

INIT_STD = 0.02
IMPLS = ('auto', 'loop', 'fused', 'grouped_mm')


def _torch_version() -> tuple:
    return tuple(int(v) for v in torch.__version__.split('+')[0].split('.')[:2])


def grouped_mm_supported(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``torch._grouped_mm`` has a fused, sync-free kernel for these operands:
    CUDA sm90 (sm100 from PyTorch 2.9), bf16 compute, widths multiple of 8."""
    if not (hasattr(torch, '_grouped_mm') and x.is_cuda and x.shape[0] > 0):
        return False
    major = torch.cuda.get_device_capability(x.device)[0]
    if not (major == 9 or (major == 10 and _torch_version() >= (2, 9))):
        return False
    return (compute_dtype(x) == torch.bfloat16 and weight.shape[-2] % 8 == 0
            and weight.shape[-1] % 8 == 0)


def _loop_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 dispatch: TokenDispatch) -> torch.Tensor:
    # Unbind once: indexing ``weight[e]`` in the loop would make backward zero-fill a
    # gradient as large as the whole stack for every expert.
    weights = weight.unbind(0)
    biases = bias.unbind(0) if bias is not None else (None, ) * len(weights)
    outs = [
        x_e @ w if b is None else torch.addmm(b, x_e, w)
        for x_e, w, b in zip(x.split(dispatch.splits), weights, biases)
    ]
    return torch.cat(outs)


def _grouped_mm_linear(x: torch.Tensor, weight: torch.Tensor,
                       bias: Optional[torch.Tensor],
                       dispatch: TokenDispatch) -> torch.Tensor:
    dtype = compute_dtype(x)
    out = torch._grouped_mm(x.to(dtype), weight.to(dtype), offs=dispatch.offsets)
    if bias is not None:
        out = out + bias.to(dtype).index_select(0, dispatch.expert_ids)
    return out


def grouped_linear(x: torch.Tensor,
                   weight: torch.Tensor,
                   bias: Optional[torch.Tensor],
                   dispatch: TokenDispatch,
                   impl: str = 'auto',
                   gather: bool = False,
                   scale: Optional[torch.Tensor] = None,
                   reduce: bool = False) -> torch.Tensor:
    """Each slot through the linear map of its expert.

    Args:
        x (Tensor): (M, in) rows sorted by expert (``dispatch.expert_ids``), or with
            ``gather`` (N, in) token rows.
        weight (Tensor): (E, in, out).
        bias (Tensor, optional): (E, out).
        dispatch (TokenDispatch): The sorted assignment of the slots.
        impl (str): ``'auto'``, ``'loop'``, ``'fused'`` or ``'grouped_mm'``.
        gather (bool): Take each slot's token row of ``x`` (:meth:`TokenDispatch.gather`).
        scale (Tensor, optional): (M, 1) factor of each slot's output (the gates).
        reduce (bool): Sum each token's slots (:meth:`TokenDispatch.sum_tokens`).

    Returns:
        Tensor: (M, out), or (N, out) with ``reduce``.
    """
    if impl == 'auto':
        impl = 'grouped_mm' if grouped_mm_supported(x, weight) else 'fused'
    if impl == 'fused' and torch.jit.is_tracing():
        # the same arithmetic; a trace (the FLOP counter) sees the loop's matmuls,
        # where the fused function would be one opaque node
        impl = 'loop'
    if impl == 'fused':
        token_ids = dispatch.token_ids
        return fused_grouped_linear(
            x, weight, bias, dispatch.splits,
            in_index=token_ids if gather else None,
            scale=None if scale is None else scale.view(-1),
            out_index=token_ids if reduce else None, out_rows=dispatch.num_tokens)
    if impl not in IMPLS:
        raise ValueError(f'impl must be one of {IMPLS}, got {impl!r}.')
    if gather:
        x = dispatch.gather(x)
    if scale is not None and bias is None:
        # a row scale commutes with a bias-free linear map: scale its input (in a MoA
        # the hd-wide head outputs rather than the C-wide projections)
        x, scale = x * scale.to(x.dtype), None
    path = _grouped_mm_linear if impl == 'grouped_mm' else _loop_linear
    y = path(x, weight, bias, dispatch)
    if scale is not None:
        y = y * scale.to(y.dtype)
    return dispatch.sum_tokens(y) if reduce else y


class GroupedExperts(nn.Module):
    """E two-layer MLP experts ``C -> H -> C`` with stacked weights.

    Parameters: ``w1 (E, C, H)``, ``b1 (E, H)``, ``w2 (E, H, C)``, ``b2 (E, C)``
    (input-major, so ``x @ w1[e]``; a dense ``nn.Linear`` weight maps to ``w1[e]`` as
    its transpose).

    Args:
        num_experts (int): E.
        in_features (int): C.
        hidden_features (int): H of each expert.
        act_layer (type): Activation. Defaults to ``nn.GELU``.
        drop (float): Dropout after the activation.
    """
    #: The stacked per-expert tensors (see :func:`~.partial.train_experts`).
    EXPERT_STACKS = ('w1', 'b1', 'w2', 'b2')

    def __init__(self,
                 num_experts: int,
                 in_features: int,
                 hidden_features: int,
                 act_layer: type = nn.GELU,
                 drop: float = 0.):
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(num_experts, in_features, hidden_features))
        self.b1 = nn.Parameter(torch.empty(num_experts, hidden_features))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden_features, in_features))
        self.b2 = nn.Parameter(torch.empty(num_experts, in_features))
        self.act = act_layer()
        self.drop = nn.Dropout(drop)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """ViT initialisation: weights truncated normal (std 0.02), biases zero."""
        for w in (self.w1, self.w2):
            nn.init.trunc_normal_(w, std=INIT_STD)
        for b in (self.b1, self.b2):
            nn.init.zeros_(b)

    def forward(self, x: torch.Tensor, dispatch: TokenDispatch, gates: torch.Tensor,
                impl: str = 'auto') -> torch.Tensor:
        """Gate-weighted sum of each token's experts.

        Args:
            x (Tensor): (N, C) tokens.
            dispatch (TokenDispatch): Their k experts each, sorted.
            gates (Tensor): (N, k) gates of those experts.
            impl (str): See :func:`grouped_linear`.

        Returns:
            Tensor: (N, C).
        """
        gates = dispatch.gather_slots(gates.reshape(-1, 1))  # (M, 1) in slot order
        h = self.act(grouped_linear(x, self.w1, self.b1, dispatch, impl, gather=True))
        return grouped_linear(self.drop(h), self.w2, self.b2, dispatch, impl,
                              scale=gates, reduce=True)

    def extra_repr(self) -> str:
        E, C, H = self.w1.shape
        return f'num_experts={E}, in_features={C}, hidden_features={H}'
