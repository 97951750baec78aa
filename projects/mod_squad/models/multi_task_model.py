"""One ModSquadViT, one stock mmpretrain / mmdet / mmseg model per task."""
from typing import Dict, List, Optional, Union

import torch
from mmengine.model import BaseModel, ModuleDict

from mod_squad.moe import collect_aux_losses
from mod_squad.registry import MODELS
from .backbones import SharedBackboneView
from .branch_inputs import check_branch_inputs
from .continual import freeze_old_branches
from .multi_task_data_preprocessor import MultiTaskDataPreprocessor


@MODELS.register_module()
class ModSquadMultiTaskModel(BaseModel):
    """Heterogeneous multi-task model: a shared ModSquadViT and one branch per task.

    A branch is a STOCK model config built in its own scope (``_scope_='mmpretrain'``
    ``'mmdet'`` or ``'mmseg'``): e.g. an mmpretrain ``ImageClassifier``, an mmdet
    ``MaskRCNN`` or ``RetinaNet``, an mmseg ``EncoderDecoder``, with its own data
    preprocessor, neck, heads, losses and train/test settings. Its ``backbone`` is a
    :class:`SharedBackboneView` (``dict(type='mod_squad.SharedBackboneView',
    out_type=...)``), which runs the shared backbone with that task's routers and
    shapes its outputs for the branch's neck; a neck that cannot take them (e.g. an
    FPN given ``(B, C)`` vectors) is an error at construction. The shared backbone
    itself returns tokens (``out_type='raw'``) and needs no ``out_type``.

    A batch holds one task (``data['task']``). ``forward(mode='loss')`` returns the
    branch's losses prefixed by the task (``cls.loss``, ``det.loss_rpn_cls``,
    ``seg.decode.loss_ce``), loss terms scaled by the task's weight, plus the MoE
    auxiliary losses (``loss_moe_mi``, ...); ``'predict'`` returns the toolbox's own
    data samples, so its evaluators and visualizers work unchanged.

    Branches, routers and task embeddings of the tasks not in an iteration get no
    gradient (``None``, so optimisers leave them alone); under DDP wrap with
    ``model_wrapper_cfg=dict(type='MMDistributedDataParallel',
    find_unused_parameters=True)``.

    Args:
        backbone (dict): ``ModSquadViT`` config without ``out_type``;
            ``task_names`` defaults to the branch names.
        branches (dict[str, dict]): Task name -> stock model config.
        loss_weights (dict[str, float], optional): Task name -> weight of its losses
            (default 1 for every task).
    """

    def __init__(self,
                 backbone: dict,
                 branches: Dict[str, dict],
                 loss_weights: Optional[Dict[str, float]] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(data_preprocessor=MultiTaskDataPreprocessor(), init_cfg=init_cfg)
        if not branches:
            raise ValueError('ModSquadMultiTaskModel needs at least one branch.')
        backbone = dict(backbone)
        backbone.setdefault('task_names', tuple(branches))
        if backbone.setdefault('out_type', 'raw') != 'raw':
            raise ValueError(
                f"model.backbone.out_type={backbone['out_type']!r} is not used: each "
                "branch's SharedBackboneView shapes its own outputs (e.g. "
                "branches.cls.backbone=dict(type='mod_squad.SharedBackboneView', "
                "out_type='avg_featmap')). Remove out_type from the shared backbone.")
        self.backbone = MODELS.build(backbone)
        no_router = sorted(set(branches) - set(self.backbone.task_names))
        if no_router:
            raise ValueError(f'Branches {no_router} have no router in the backbone, '
                             f'whose task_names are {list(self.backbone.task_names)}.')
        # mmengine's ModuleDict: init_weights reaches every branch's init_cfg (heads'
        # priors, FPN Xavier, ...); torch's would skip them.
        self.branches = ModuleDict(
            {task: MODELS.build(cfg) for task, cfg in branches.items()})
        for task, branch in self.branches.items():
            if not isinstance(getattr(branch, 'backbone', None), SharedBackboneView):
                raise TypeError(
                    f'The backbone of branch {task!r} must be '
                    "dict(type='mod_squad.SharedBackboneView', ...), got "
                    f'{type(getattr(branch, "backbone", None)).__name__}.')
            branch.backbone.bind(self.backbone, task)
            check_branch_inputs(task, branch)
        self.data_preprocessor.bind(self.branches)
        freeze_old_branches(self)  # continual learning: a new task's branch trains
        loss_weights = dict(loss_weights or {})
        unknown = sorted(set(loss_weights) - set(branches))
        if unknown:
            raise ValueError(f'loss_weights for tasks {unknown} without a branch; '
                             f'branches: {list(branches)}.')
        self.loss_weights = {task: float(loss_weights.get(task, 1.)) for task in branches}

    @property
    def task_names(self) -> tuple:
        return tuple(self.branches)

    def forward(self,
                inputs: Union[torch.Tensor, List[torch.Tensor]],
                data_samples: Optional[list] = None,
                mode: str = 'tensor',
                task: Optional[str] = None):
        """Run the branch of ``task`` in OpenMMLab's ``mode`` ('loss', 'predict' or
        'tensor') on a preprocessed batch of that task."""
        if task not in self.branches:
            raise KeyError(f'Unknown task {task!r}; the model has branches '
                           f'{list(self.branches)}.')
        branch = self.branches[task]
        if mode == 'loss':
            losses = self._task_losses(task, branch.loss(inputs, data_samples))
            losses.update(collect_aux_losses(self.backbone))
            return losses
        if mode == 'predict':
            return branch.predict(inputs, data_samples)
        if mode == 'tensor':
            return branch(inputs, data_samples, mode='tensor')
        raise RuntimeError(f'Invalid mode "{mode}". Only supports loss, predict and '
                           'tensor mode')

    def _task_losses(self, task: str, losses: dict) -> dict:
        """Prefix every key with ``task.`` and scale the loss terms by its weight."""
        weight = self.loss_weights[task]
        out = {}
        for key, value in losses.items():
            if 'loss' in key and weight != 1.:
                value = [v * weight for v in value] if isinstance(
                    value, (list, tuple)) else value * weight
            out[f'{task}.{key}'] = value
        return out
