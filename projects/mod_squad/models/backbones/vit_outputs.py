"""Shaping ViT block outputs for their consumer (classification head, neck, FPN)."""
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer

from .simple_pyramid import SimplePyramid

OUT_TYPES = ('raw', 'cls_token', 'featmap', 'avg_featmap', 'pyramid')


def check_out_type(out_type: str, with_cls_token: bool) -> None:
    if out_type not in OUT_TYPES:
        raise ValueError(f'Unsupported out_type {out_type!r}, choose from {OUT_TYPES}.')
    if out_type == 'cls_token' and not with_cls_token:
        raise ValueError('out_type="cls_token" needs a backbone with_cls_token=True.')


def add_output_modules(module: nn.Module, out_type: str, embed_dims: int,
                       pyramid_scales: Sequence[float], norm_cfg: dict) -> None:
    """Give ``module`` what ``out_type`` needs: ``ln2`` for ``'avg_featmap'`` (the
    mmpretrain name), ``pyramid`` (:class:`SimplePyramid`) for ``'pyramid'``."""
    if out_type == 'avg_featmap':
        module.ln2 = build_norm_layer(norm_cfg, embed_dims)[1]
    if out_type == 'pyramid':
        module.pyramid = SimplePyramid(embed_dims, pyramid_scales)


def format_outputs(module: nn.Module, out_type: str, tokens: List[torch.Tensor],
                   hw: Tuple[int, int], num_extra_tokens: int) -> Tuple[torch.Tensor, ...]:
    """(B, N, C) tokens of the chosen blocks -> outputs of ``out_type``.

    Returns per block: ``raw`` (B, N, C); ``cls_token`` / ``avg_featmap`` (B, C);
    ``featmap`` (B, C, H, W); for ``pyramid`` one (B, C, H*s, W*s) map per scale.
    """
    if out_type == 'raw':
        return tuple(tokens)
    if out_type == 'cls_token':
        return tuple(x[:, 0] for x in tokens)
    patch_tokens = [x[:, num_extra_tokens:] for x in tokens]
    if out_type == 'avg_featmap':
        return tuple(module.ln2(x.mean(dim=1)) for x in patch_tokens)
    # (B, H*W, C) -> (B, C, H, W)
    maps = [x.transpose(1, 2).reshape(x.shape[0], -1, *hw) for x in patch_tokens]
    return module.pyramid(maps) if out_type == 'pyramid' else tuple(maps)
