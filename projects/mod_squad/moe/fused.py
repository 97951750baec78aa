"""The ``'fused'`` expert path: gather, per-expert matmul, row scale and scatter-add in
one autograd function.

The readable path (``'loop'`` in :mod:`.experts`) gathers every token once per chosen
expert, runs one ``addmm`` per expert, glues the outputs with ``torch.cat`` and lets
autograd keep the gathered ``(M, in)`` input and the ``(M, out)`` output for backward
(M = N * k slots: in a MoA with k = 12 heads, twelve copies of the tokens). Here each
expert reads its rows of the ``(N, in)`` input by index, writes its product into a
slice of one preallocated output (or adds it into the token rows), and backward gathers
the rows again, one expert at a time, and writes each weight gradient straight into its
slice of the stacked gradient. Only the ungathered input (usually alive anyway) and the
indices are kept; nothing ``(M, ...)`` is concatenated, stacked or saved. A row scale
(the gates) is applied inside, so its gradient comes from the product that backward
computes anyway. Tested against the loop path (values and every gradient).
"""
from typing import List, Optional

import torch
from torch.autograd.function import once_differentiable


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype ``x``'s matmuls run in: autocast's, when on, else ``x``'s."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def _rows(x: torch.Tensor, index: Optional[torch.Tensor], rows: slice) -> torch.Tensor:
    """``x[index[rows]]`` (gathered) or ``x[rows]`` (already in slot order)."""
    return x[rows] if index is None else x.index_select(0, index[rows])


class _FusedGroupedLinear(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, weight, bias, scale, splits: List[int],
                in_index: Optional[torch.Tensor], out_index: Optional[torch.Tensor],
                out_rows: int):
        if out_index is None:  # every row is written
            out = x.new_empty(out_rows, weight.shape[-1])
        else:
            out = x.new_zeros(out_rows, weight.shape[-1])
        start = 0
        for e, n in enumerate(splits):
            rows, start = slice(start, start + n), start + n
            if n == 0:
                continue
            x_e = _rows(x, in_index, rows)
            y_e = out[rows] if out_index is None else None
            if bias is None:
                y_e = torch.mm(x_e, weight[e], out=y_e)
            else:
                y_e = torch.addmm(bias[e], x_e, weight[e], out=y_e)
            if scale is not None:
                y_e.mul_(scale[rows, None])
            if out_index is not None:
                out.index_add_(0, out_index[rows], y_e)
        ctx.save_for_backward(x, weight, bias, scale, in_index, out_index)
        ctx.splits = splits
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight, bias, scale, in_index, out_index = ctx.saved_tensors
        need_x, need_w, need_b, need_s = ctx.needs_input_grad[:4]
        grad = grad.contiguous()
        grad_x = None
        if need_x:  # without in_index every row is written
            grad_x = torch.zeros_like(x) if in_index is not None else torch.empty_like(x)
        # written expert by expert; an expert without rows gets zeros
        grad_w = torch.empty_like(weight) if need_w else None
        grad_b = torch.empty_like(bias) if need_b else None
        grad_s = torch.empty_like(scale) if need_s else None
        start = 0
        for e, n in enumerate(ctx.splits):
            rows, start = slice(start, start + n), start + n
            if n == 0:
                for stack in (grad_w, grad_b):
                    if stack is not None:
                        stack[e].zero_()
                continue
            g_e = _rows(grad, out_index, rows)  # d loss / d (scaled) product
            x_e = _rows(x, in_index, rows) if need_w or need_s else None
            gx_e = None  # d loss / d x_e of the unscaled product, then scaled
            if need_x or need_s:
                into = grad_x[rows] if need_x and in_index is None else None
                gx_e = torch.mm(g_e, weight[e].t(), out=into)
            if need_s:
                s_grad = (gx_e * x_e).sum(-1)
                if bias is not None:
                    s_grad += g_e @ bias[e]
                grad_s[rows] = s_grad
            if scale is not None:
                s_e = scale[rows, None]
                g_e = g_e * s_e if need_w or need_b else None
                gx_e = gx_e.mul_(s_e) if need_x else None
            if need_x and in_index is not None:
                grad_x.index_add_(0, in_index[rows], gx_e)
            if need_w:
                torch.mm(x_e.t(), g_e, out=grad_w[e])
            if need_b:
                torch.sum(g_e, 0, out=grad_b[e])
        return grad_x, grad_w, grad_b, grad_s, None, None, None, None


def fused_grouped_linear(x: torch.Tensor,
                         weight: torch.Tensor,
                         bias: Optional[torch.Tensor],
                         splits: List[int],
                         in_index: Optional[torch.Tensor] = None,
                         scale: Optional[torch.Tensor] = None,
                         out_index: Optional[torch.Tensor] = None,
                         out_rows: Optional[int] = None) -> torch.Tensor:
    """Slot ``i`` (of expert ``e``): ``scale[i] * (x[in_index[i]] @ weight[e] + bias[e])``,
    written to output row i, or added into row ``out_index[i]``.

    Args:
        x (Tensor): (N, in) rows, or (M, in) in slot order without ``in_index``.
        weight (Tensor): (E, in, out).
        bias (Tensor, optional): (E, out).
        splits (list[int]): Slots per expert (the slots are sorted by expert).
        in_index (Tensor, optional): (M,) row of ``x`` of each slot.
        scale (Tensor, optional): (M,) factor of each slot's product.
        out_index (Tensor, optional): (M,) output row each slot is added into.
        out_rows (int, optional): Output rows with ``out_index`` (default: N).

    Returns:
        Tensor: (M, out), or (out_rows, out) with ``out_index``. In the autocast dtype
        when autocast is on (the matmuls run in it), else in ``x``'s dtype.
    """
    dtype = compute_dtype(x)
    if out_index is None:
        out_rows = sum(splits)
    elif out_rows is None:
        out_rows = x.shape[0]
    cast = [t if t is None else t.to(dtype) for t in (x, weight, bias, scale)]
    with torch.autocast(x.device.type, enabled=False):
        return _FusedGroupedLinear.apply(*cast, splits, in_index, out_index, out_rows)
