"""Continual learning without forgetting: a new task added to a trained ModSquadViT.

``ModSquadViT(continual=dict(task='shapes', num_experts=2, ...))`` (the fields of
:class:`ContinualConfig`) builds the trained model's layout plus, in every routed
layer, M new experts (after the old ones) and a router for the new task over all of
them; the old tasks' routers keep their old width (:func:`mod_squad.moe.growth.
narrow_router`), so the old tasks compute exactly what they computed. Only the new
task's routers, its task embedding and the new experts train
(``trainable=dict(mode='experts', tasks=[task], last=M)``, set at build); in a
:class:`ModSquadMultiTaskModel` the old tasks' branches are frozen too, and the new
task's branch trains.

The trained model loads by ``load_from`` (its branches with it): a checkpoint whose
layers have the old expert counts grows as it loads (:func:`grow_checkpoint`), the
new experts keep their fresh initialisation or copy the most used experts of an old
task (``init='copy'``, ``copy_from``, ``usage``: the checkpoint itself, saved with
``ExpertUsageHook``, or a ``usage.json``); a checkpoint of the grown model (resuming,
testing) loads as it is.
"""
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Union

import torch
import torch.nn as nn

from mod_squad.moe import MoAttention, RoutedLayer
from mod_squad.moe.config import _from_dict
from mod_squad.moe.growth import grow_layer_state, most_used_experts, narrow_router
from .fine_tuning import load_usage

INITS = ('fresh', 'copy')


@dataclass
class ContinualConfig:
    """A new task for a trained ModSquadViT.

    Args:
        task (str): The new task (one of the backbone's ``task_names``; a
            multi-task model's are its branches).
        num_experts (int | dict): M new experts per routed layer, or
            ``dict(mlp=m, attn=m)`` per layer kind (a kind left out gets none).
        init (str): ``'fresh'`` (default: the layers' initialisation) or ``'copy'``:
            each new expert copies one of the M most used experts of ``copy_from``.
        copy_from (str, optional): ``'copy'``: the old task whose usage ranks them.
        usage (str | Mapping, optional): ``'copy'``: a checkpoint with
            ``expert_usage_running``, a ``usage.json`` or layer -> (E,) usage.
    """
    task: str
    num_experts: Union[int, Dict[str, int]]
    init: str = 'fresh'
    copy_from: Optional[str] = None
    usage: Union[None, str, Mapping] = None

    def __post_init__(self):
        if self.init not in INITS:
            raise ValueError(f'continual.init must be one of {INITS}, got {self.init!r}.')
        if (self.init == 'copy') != (self.copy_from is not None and
                                     self.usage is not None):
            raise ValueError("continual.init='copy' needs copy_from and usage (and "
                             f"'fresh' takes neither), got init={self.init!r}, "
                             f'copy_from={self.copy_from!r}, usage={self.usage!r}.')
        counts = self.num_experts if isinstance(self.num_experts, Mapping) else dict(
            attn=self.num_experts, mlp=self.num_experts)
        unknown = sorted(set(counts) - {'attn', 'mlp'})
        if unknown:
            raise ValueError(f'continual.num_experts has unknown layer kinds {unknown}; '
                             "valid kinds are ['attn', 'mlp'].")
        bad = {k: m for k, m in counts.items()
               if isinstance(m, bool) or not isinstance(m, int) or m < 0}
        if bad:
            raise ValueError(f'continual.num_experts must be ints >= 0, got {bad}.')
        self.new_experts = dict(attn=counts.get('attn', 0), mlp=counts.get('mlp', 0))

    @classmethod
    def build(cls, cfg: Union[None, dict, 'ContinualConfig']
              ) -> Optional['ContinualConfig']:
        if cfg is None or isinstance(cfg, cls):
            return cfg
        if not isinstance(cfg, dict):
            raise TypeError(f'continual must be a dict of ContinualConfig fields, got '
                            f'{cfg!r}.')
        return _from_dict(cls, dict(cfg), 'continual')

    def trainable(self) -> dict:
        """The backbone's ``trainable``: the new task's routers and embedding, and its
        new experts."""
        last = {kind: m for kind, m in self.new_experts.items() if m > 0}
        if not last:
            return dict(mode='routers', tasks=[self.task])
        return dict(mode='experts', tasks=[self.task], last=last)


def _kind(layer: RoutedLayer) -> str:
    return 'attn' if isinstance(layer, MoAttention) else 'mlp'


def old_tasks(backbone: nn.Module) -> List[str]:
    """The tasks of a continual backbone's checkpoint (all but the new one)."""
    return [t for t in backbone.task_names if t != backbone.continual_cfg.task]


def check_continual(cfg: ContinualConfig, task_names, old_counts: Mapping[str, Dict[
        int, int]]) -> None:
    """Errors at build: an unknown new task or ``copy_from``, more new experts to copy
    than a layer has. ``old_counts``: kind -> {block: E} before growing."""
    if cfg.task not in task_names:
        raise ValueError(f'continual.task={cfg.task!r} is not one of the task_names '
                         f'{list(task_names)} (add it there, and a branch for it in a multi-task model).')
    old = [t for t in task_names if t != cfg.task]
    if not old:
        raise ValueError(f'continual.task={cfg.task!r} is the only task: there is no '
                         'trained task to keep.')
    if cfg.init == 'copy':
        if cfg.copy_from not in old:
            raise ValueError(f'continual.copy_from={cfg.copy_from!r} is not an old '
                             f'task; the old tasks are {old}.')
        for kind, blocks in old_counts.items():
            for block, num in blocks.items():
                if cfg.new_experts[kind] > num:
                    raise ValueError(
                        f'continual.num_experts: block {block} has {num} {kind} '
                        f'experts to copy {cfg.new_experts[kind]} new ones from; with '
                        f"init='copy' at most {num}.")


def grow_counts(cfg: Optional[ContinualConfig], kind: str,
                layers: Dict[int, dict]) -> Dict[int, dict]:
    """The settings of one kind's layers (block -> dict with ``num_experts``) with
    the new experts added."""
    if cfg is None:
        return layers
    return {i: dict(s, num_experts=s['num_experts'] + cfg.new_experts[kind])
            for i, s in layers.items()}


def narrow_old_routers(backbone: nn.Module) -> None:
    """The old tasks' routers of every routed layer keep their old width."""
    cfg = backbone.continual_cfg
    for layer in backbone.routed_layers().values():
        num_old = layer.num_experts - cfg.new_experts[_kind(layer)]
        for task in old_tasks(backbone):
            narrow_router(layer.router, task, num_old)


def _copy_ids(backbone: nn.Module) -> Dict[str, torch.Tensor]:
    """Routed layer name -> the old experts the new ones copy (``init='copy'``)."""
    cfg = backbone.continual_cfg
    try:
        usage = load_usage(cfg.usage, cfg.copy_from)
    except ValueError as error:
        raise ValueError(f'continual.copy_from={cfg.copy_from!r}: {error}') from None
    out = {}
    for name, layer in backbone.routed_layers().items():
        num_new = cfg.new_experts[_kind(layer)]
        if not num_new:
            continue
        if name not in usage:
            raise ValueError(f'continual.usage has no layer {name}; it has '
                             f'{list(usage)}.')
        try:
            out[name] = most_used_experts(usage[name], num_new)
        except ValueError as error:
            raise ValueError(f'continual: layer {name} of task {cfg.copy_from!r}: '
                             f'{error}') from None
    return out


def grow_checkpoint(backbone: nn.Module, state_dict: dict, prefix: str) -> None:
    """Grow, in place, the layers of ``state_dict`` (keys ``prefix + ...``) that
    have the continual backbone's old expert counts; layers already grown stay.

    Raises:
        ValueError: a layer with another number of experts or other tasks, a
            checkpoint that already has the new task, or (``'copy'``) a usage
            without ``copy_from``.
    """
    cfg = backbone.continual_cfg
    copy_ids = None
    for name, layer in backbone.routed_layers().items():
        layer_prefix = f'{prefix}{name}.'
        state = {k[len(layer_prefix):]: v for k, v in state_dict.items()
                 if k.startswith(layer_prefix)}
        stacks = [v for k, v in state.items()
                  if k in ('experts.w1', 'q_proj')]  # the first stack of each kind
        if not stacks:
            continue
        have, num_new = stacks[0].shape[0], cfg.new_experts[_kind(layer)]
        num_old = layer.num_experts - num_new
        tasks = [k[len('router.weight.'):] for k in state
                 if k.startswith('router.weight.')]
        if cfg.task in tasks:
            if have == layer.num_experts:
                continue  # the grown model's checkpoint
            raise ValueError(f'The checkpoint already has a task {cfg.task!r} (tasks '
                             f'{tasks}): continual.task must be a new name.')
        if have != num_old:
            raise ValueError(
                f'{layer_prefix[:-1]} has {have} experts in the checkpoint; adding '
                f'task {cfg.task!r} expects the trained model\'s {num_old} (then '
                f'{layer.num_experts} with the new ones). Build the backbone with the '
                "checkpoint's num_experts / num_attn_experts (per block where they "
                "differ): the old tasks' routers must load as they are, so "
                'expand_experts cannot apply.')
        if sorted(tasks) != sorted(old_tasks(backbone)):
            raise ValueError(f'{layer_prefix[:-1]} of the checkpoint has the tasks '
                             f'{tasks}; adding {cfg.task!r} keeps them all: the '
                             f'backbone\'s other tasks are {old_tasks(backbone)}.')
        if not num_new:
            continue
        if cfg.init == 'copy' and copy_ids is None:
            copy_ids = _copy_ids(backbone)
        grown = grow_layer_state(state, layer, tasks,
                                 copy_ids[name] if copy_ids is not None else None)
        state_dict.update({layer_prefix + k: v for k, v in grown.items()})


def freeze_old_branches(model: nn.Module) -> None:
    """A multi-task model with a continual backbone: the old tasks' branches stop
    getting gradients (``requires_grad=False``)."""
    cfg = getattr(model.backbone, 'continual_cfg', None)
    if cfg is None:
        return
    if cfg.task not in model.branches:
        raise ValueError(f'continual.task={cfg.task!r} has no branch; branches: '
                         f'{list(model.branches)}.')
    for task in old_tasks(model.backbone):
        if task in model.branches:
            model.branches[task].requires_grad_(False)
