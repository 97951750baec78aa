"""Shaping ViT block outputs for their consumer (classification head, neck, FPN)."""
from typing import Dict, List, Sequence, Tuple, Union

import torch
from mmcv.cnn import build_norm_layer
from mmengine.model import BaseModule

from .simple_pyramid import SimplePyramid


class ViTOutputs(BaseModule):
    """The outputs of a ViT for its consumer: which blocks, in which shape.

    Owned by the module that returns them: :class:`ModSquadViT` in a stock model, a
    :class:`SharedBackboneView` per task in a multi-task model. Its submodules are
    what ``out_type`` needs: ``ln2`` (the norm of ``'avg_featmap'``, mmpretrain's
    name) and ``pyramid`` (:class:`SimplePyramid`). Checkpoints that keep them
    directly under the owner (``ln2.*``, ``pyramid.*``: mmpretrain ViTs, earlier
    mod_squad versions) load through :meth:`rename_owner_keys`.

    Args:
        out_type (str): ``'cls_token'`` or ``'avg_featmap'`` (B, C),
            ``'featmap'`` (B, C, h, w), ``'featmap_cls_token'`` ``[(B, C, h, w),
            (B, C)]`` (mmseg ViT's ``output_cls_token=True``, for ``DPTHead``),
            ``'pyramid'`` (B, C, h*s, w*s) per scale s, ``'raw'`` (B, N, C).
        out_indices (int | Sequence[int]): Blocks whose outputs are returned.
        embed_dims (int): Token width C.
        num_layers (int): Blocks of the ViT (negative indices count from the end).
        num_extra_tokens (int): Tokens before the patch tokens (1 with a cls token).
        pyramid_scales (Sequence[float]): Scales of the ``'pyramid'`` output.
        norm_cfg (dict): Norm of the ``'avg_featmap'`` output.
    """
    OUT_TYPES = ('raw', 'cls_token', 'featmap', 'featmap_cls_token', 'avg_featmap',
                 'pyramid')
    #: Output types of (B, C) vectors, for classification heads.
    VECTOR_TYPES = ('cls_token', 'avg_featmap')
    #: Submodules that checkpoints may hold directly under the owner.
    OWNER_KEYS = ('ln2', 'pyramid')

    def __init__(self,
                 out_type: str,
                 out_indices: Union[int, Sequence[int]],
                 embed_dims: int,
                 num_layers: int,
                 num_extra_tokens: int,
                 pyramid_scales: Sequence[float] = (4, 2, 1, 0.5),
                 norm_cfg: dict = dict(type='LN', eps=1e-6)):
        super().__init__()
        if out_type not in self.OUT_TYPES:
            raise ValueError(f'Unsupported out_type {out_type!r}, choose from '
                             f'{self.OUT_TYPES}.')
        if out_type in ('cls_token', 'featmap_cls_token') and not num_extra_tokens:
            raise ValueError(
                f'out_type={out_type!r} needs a backbone with_cls_token=True.')
        if isinstance(out_indices, int):
            out_indices = [out_indices]
        if any(not -num_layers <= i < num_layers for i in out_indices):
            raise ValueError(f'out_indices {list(out_indices)} out of range for '
                             f'{num_layers} layers.')
        self.out_type = out_type
        self.out_indices = [i % num_layers for i in out_indices]
        self.num_extra_tokens = num_extra_tokens
        if out_type == 'avg_featmap':
            self.ln2 = build_norm_layer(norm_cfg, embed_dims)[1]
        if out_type == 'pyramid':
            if len(self.out_indices) not in (1, len(pyramid_scales)):
                raise ValueError(
                    f"out_type='pyramid' rescales one block's map to every scale, or "
                    f'block i to scale i: got out_indices {list(out_indices)} for '
                    f'pyramid_scales {tuple(pyramid_scales)}.')
            self.pyramid = SimplePyramid(embed_dims, pyramid_scales)

    @property
    def num_outputs(self) -> int:
        """How many outputs :meth:`forward` returns."""
        if self.out_type == 'pyramid':
            return len(self.pyramid.scales)
        return len(self.out_indices)

    def rename_owner_keys(self, state_dict: Dict[str, torch.Tensor], owner_prefix: str,
                          prefix: str) -> None:
        """Move ``{owner_prefix}ln2.*`` / ``pyramid.*`` checkpoint keys under this
        module's ``prefix`` (in place), for the submodules it has; call it from the
        owner's ``_load_from_state_dict``."""
        for name in self.OWNER_KEYS:
            if not hasattr(self, name):
                continue
            old = f'{owner_prefix}{name}.'
            for key in [k for k in state_dict if k.startswith(old)]:
                state_dict[prefix + key[len(owner_prefix):]] = state_dict.pop(key)

    def forward(self, tokens: Sequence[torch.Tensor], hw: Tuple[int, int]
                ) -> Tuple[Union[torch.Tensor, List[torch.Tensor]], ...]:
        """tokens: (B, N, C) per ``out_indices`` entry; hw: the patch grid (h, w).

        Returns:
            Per block: ``raw`` (B, N, C); ``cls_token`` / ``avg_featmap`` (B, C);
            ``featmap`` (B, C, h, w); ``featmap_cls_token`` [(B, C, h, w), (B, C)];
            for ``pyramid`` one (B, C, h*s, w*s) map per scale s.
        """
        if self.out_type == 'raw':
            return tuple(tokens)
        if self.out_type == 'cls_token':
            return tuple(x[:, 0] for x in tokens)
        patch_tokens = [x[:, self.num_extra_tokens:] for x in tokens]
        if self.out_type == 'avg_featmap':
            return tuple(self.ln2(x.mean(dim=1)) for x in patch_tokens)
        # (B, h*w, C) -> (B, C, h, w)
        maps = [x.transpose(1, 2).reshape(x.shape[0], -1, *hw) for x in patch_tokens]
        if self.out_type == 'pyramid':
            return self.pyramid(maps)
        if self.out_type == 'featmap_cls_token':
            return tuple([m, x[:, 0]] for m, x in zip(maps, tokens))
        return tuple(maps)

    def extra_repr(self) -> str:
        return f'out_type={self.out_type!r}, out_indices={self.out_indices}'
