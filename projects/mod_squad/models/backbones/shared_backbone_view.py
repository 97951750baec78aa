"""A task's view of the ModSquadViT shared by a multi-task model."""
from typing import Sequence, Union

import torch
from mmengine.model import BaseModule

from mod_squad.registry import MODELS
from .vit_outputs import ViTOutputs


@MODELS.register_module()
class SharedBackboneView(BaseModule):
    """The ``backbone`` of one task's stock model inside a
    :class:`~mod_squad.models.ModSquadMultiTaskModel`.

    It owns no copy of the backbone: the multi-task model binds it to the shared
    ModSquadViT and the task's name (:meth:`bind`); calling it runs the shared
    backbone with that task's routers and shapes the outputs for the task's
    neck/head with its own :class:`ViTOutputs` (``outputs``: ``ln2`` for
    ``'avg_featmap'``, the simple pyramid for ``'pyramid'``), which belongs to the
    task's branch.

    Args:
        out_type (str): Output type, as ``ModSquadViT``'s ``out_type``.
        out_indices (int | Sequence[int]): Blocks whose outputs are returned.
        pyramid_scales (Sequence[float]): Scales of the ``'pyramid'`` output.
        norm_cfg (dict): Norm of the ``'avg_featmap'`` output.
    """

    def __init__(self,
                 out_type: str = 'cls_token',
                 out_indices: Union[int, Sequence[int]] = -1,
                 pyramid_scales: Sequence[float] = (4, 2, 1, 0.5),
                 norm_cfg: dict = dict(type='LN', eps=1e-6),
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.outputs_cfg = dict(
            out_type=out_type,
            out_indices=out_indices,
            pyramid_scales=pyramid_scales,
            norm_cfg=norm_cfg)
        self.task = None
        self.__dict__['shared'] = None  # not a submodule: owned by the multi-task model

    def bind(self, backbone, task: str) -> None:
        """Run ``backbone`` (a ModSquadViT) with the routers of ``task``."""
        self.task = backbone.check_task(task)
        self.__dict__['shared'] = backbone
        try:
            self.outputs = ViTOutputs(
                embed_dims=backbone.embed_dims,
                num_layers=backbone.num_layers,
                num_extra_tokens=backbone.num_extra_tokens,
                **self.outputs_cfg)
        except ValueError as error:
            raise ValueError(f'SharedBackboneView of task {task!r}: {error}') from error

    def forward(self, x: torch.Tensor) -> tuple:
        """x: (B, 3, H, W) -> outputs of ``out_type`` per ``out_indices`` entry."""
        if self.shared is None:
            raise RuntimeError(
                'SharedBackboneView is not bound to a backbone: use it as a branch '
                'backbone of mod_squad.ModSquadMultiTaskModel.')
        tokens, hw = self.shared.forward_tokens(x, self.task, self.outputs.out_indices)
        return self.outputs(tokens, hw)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if self.shared is not None:
            self.outputs.rename_owner_keys(state_dict, prefix, f'{prefix}outputs.')
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f'task={self.task!r}'
