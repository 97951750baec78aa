"""Efficient fine-tuning modes: which parameters of a ModSquadViT train.

A mode is chosen in a config by the backbone's ``trainable`` (the fields of
:class:`TrainableConfig`), in a stock single-task model (``model.backbone.
trainable=dict(mode='routers')``) as in a ``ModSquadMultiTaskModel``; necks and heads
outside the backbone train in every mode.

========================  ======================================================
mode                      what of the backbone trains
========================  ======================================================
``'full'`` (default)      everything (the baseline)
``'routers'``             the routers and task embeddings of ``tasks``
``'top_experts'``         those + the ``top_n`` experts per layer most used by
                          ``task`` (``usage``: a checkpoint's running usage, a
                          ``usage.json``, or layer -> (E,) usage)
``'experts'``             those + given experts (``experts``: layer -> ids), or the
                          ``last`` M of every layer (newly added ones)
``'adapters'``            only the adapters (``ModSquadViT(adapter=...)``, the
                          VMT-Adapter baseline)
``'heads'``               nothing: the backbone is a fixed feature extractor, kept
                          in eval mode (linear probe)
========================  ======================================================

Adapters train in ``'full'`` and ``'adapters'`` only.

``tasks`` defaults to every task of the backbone. The backbone's output adapters
(``outputs``: the ``'avg_featmap'`` norm, the built-in pyramid) belong to the heads:
they train in every mode, as a multi-task model's per-branch views do (for a strict
linear probe add ``frozen_stages=num_layers``, which freezes the norm as in
mmpretrain). ``frozen_stages`` applies on top of any mode.

Why ``requires_grad`` at build: mmengine's runner wraps the model in DDP in its
constructor, before the optimiser and before any hook runs, and DDP takes the
parameters that require grad at construction; a frozen parameter then gets no
gradient, so AdamW keeps no state for it and applies no weight decay (an optimiser
constructor with ``lr_mult=0`` would still build state and reduce gradients, and
cannot freeze some experts of a stacked tensor). Some experts of a stack train
through :func:`mod_squad.moe.train_experts`.
"""
import json
import re
from dataclasses import dataclass, fields
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.runner.checkpoint import CheckpointLoader

from mod_squad.moe import (ExpertSelection, MoAttention, RoutedLayer, adapter_modules,
                           train_experts)
from mod_squad.moe.config import _from_dict

MODES = ('full', 'routers', 'top_experts', 'experts', 'adapters', 'heads')
#: Fields each mode takes (``mode`` aside).
MODE_FIELDS = dict(
    full=(),
    adapters=(),
    heads=(),
    routers=('tasks', ),
    top_experts=('tasks', 'task', 'top_n', 'usage'),
    experts=('tasks', 'experts', 'last'))
#: A routed layer's name, whatever the model around the backbone.
LAYER_NAME = re.compile(r'(?:^|\.)(layers\.\d+\.(?:attn|ffn))$')

PerKind = Union[None, int, Dict[str, int]]


@dataclass
class TrainableConfig:
    """What of a ModSquadViT trains (see the module doc).

    Args:
        mode (str): One of :data:`MODES`.
        tasks (Sequence[str], optional): Tasks whose routers and task embeddings
            train (modes ``'routers'``, ``'top_experts'``, ``'experts'``); None:
            all of the backbone's, ``[]``: none.
        task (str, optional): ``'top_experts'``: whose usage ranks the experts
            (needed when ``usage`` is a file).
        top_n (int | dict): ``'top_experts'``: experts per layer, one int, or
            ``dict(mlp=n, attn=n)`` per layer kind (a kind left out trains none);
            chosen by ``ExpertSelection(keep=n)``, so at least the layer's k, as an
            extracted model keeps.
        usage (str | Mapping): ``'top_experts'``: a checkpoint with
            ``expert_usage_running`` (``ExpertUsageHook``), a ``usage.json`` of
            ``tools/analysis_tools/expert_usage.py``, or layer name -> (E,) usage.
        experts (Mapping): ``'experts'``: routed layer name (``'layers.1.ffn'``,
            ``'layers.0.attn'``) -> expert ids; layers left out train none.
        last (int | dict): ``'experts'``: the last M experts of every layer, or
            ``dict(mlp=m, attn=m)`` per layer kind.
    """
    mode: str = 'full'
    tasks: Optional[Sequence[str]] = None
    task: Optional[str] = None
    top_n: PerKind = None
    usage: Union[None, str, Mapping] = None
    experts: Optional[Mapping[str, Sequence[int]]] = None
    last: PerKind = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f'trainable mode must be one of {MODES}, got {self.mode!r}.')
        allowed = MODE_FIELDS[self.mode]
        given = [f.name for f in fields(self)
                 if f.name != 'mode' and getattr(self, f.name) is not None]
        extra = [name for name in given if name not in allowed]
        if extra:
            raise ValueError(f'trainable mode {self.mode!r} does not take {extra}; it '
                             f'takes {list(allowed)}.')
        if self.mode == 'top_experts' and (self.top_n is None or self.usage is None):
            raise ValueError("trainable mode 'top_experts' needs top_n and usage.")
        if self.mode == 'top_experts' and isinstance(self.usage, str) and not self.task:
            raise ValueError("trainable mode 'top_experts' needs the task whose usage "
                             f'ranks the experts (task=...) to read {self.usage!r}.')
        if self.mode == 'experts' and (self.experts is None) == (self.last is None):
            raise ValueError("trainable mode 'experts' needs one of experts (layer -> "
                             'ids) and last (the last M experts of every layer).')

    @classmethod
    def build(cls, cfg: Union[None, dict, 'TrainableConfig']) -> 'TrainableConfig':
        """From None (``'full'``), a dict of its fields or an instance."""
        if cfg is None:
            return cls()
        if isinstance(cfg, cls):
            return cfg
        if not isinstance(cfg, dict):
            raise TypeError(f'trainable must be a dict of TrainableConfig fields, got '
                            f'{cfg!r}.')
        return _from_dict(cls, dict(cfg), 'trainable')


def layer_key(name: str) -> str:
    """``'backbone.layers.1.ffn'`` -> ``'layers.1.ffn'`` (names as the backbone's
    :meth:`routed_layers`); other names unchanged."""
    match = LAYER_NAME.search(name)
    return match.group(1) if match else name


def _kind(layer: RoutedLayer) -> str:
    return 'attn' if isinstance(layer, MoAttention) else 'mlp'


def _per_kind(value: PerKind, name: str) -> Dict[str, Optional[int]]:
    """``{'attn': n or None, 'mlp': n or None}`` from an int or a dict by kind."""
    if not isinstance(value, Mapping):
        return dict(attn=value, mlp=value)
    unknown = sorted(set(value) - {'attn', 'mlp'})
    if unknown:
        raise ValueError(f'trainable.{name} has unknown layer kinds {unknown}; valid '
                         "kinds are ['attn', 'mlp'].")
    return dict(attn=value.get('attn'), mlp=value.get('mlp'))


def _count(n, name: str, layer_name: str, num_experts: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= num_experts:
        raise ValueError(f'trainable.{name}={n!r} for {layer_name}: must be an int in '
                         f'[1, {num_experts}], the experts of the layer.')
    return n


def load_usage(usage: Union[str, Mapping], task: Optional[str]) -> Dict[str, torch.Tensor]:
    """Routed layer name (:func:`layer_key`) -> (E,) usage of ``task``.

    Args:
        usage (str | Mapping): A checkpoint holding ``expert_usage_running`` (layer
            -> (T, E); its rows follow the order of the layer's
            ``router.weight.<task>`` keys in the checkpoint's state dict), a
            ``usage.json`` (picks per task and layer), or layer name -> (E,) usage.
        task (str, optional): Whose usage; unused for a mapping.
    """
    if isinstance(usage, Mapping):
        return {layer_key(name): torch.as_tensor(value) for name, value in usage.items()}
    if usage.endswith('.json'):
        with open(usage) as f:
            report = json.load(f)
        if task not in report['tasks']:
            raise ValueError(f'trainable.task={task!r} is not in {usage}, whose tasks '
                             f"are {report['tasks']}.")
        return {layer_key(layer['name']): torch.tensor(layer['counts'][task])
                for layer in report['layers']}
    checkpoint = CheckpointLoader.load_checkpoint(usage, map_location='cpu')
    if 'expert_usage_running' not in checkpoint:
        raise ValueError(f"{usage} has no 'expert_usage_running' (saved by "
                         'ExpertUsageHook during training): give a usage.json of '
                         'tools/analysis_tools/expert_usage.py instead.')
    try:
        share = running_usage(checkpoint, task, usage)
    except ValueError as error:
        raise ValueError(f'trainable.{error}') from None
    return {layer_key(name): value for name, value in share.items()}


def running_usage(checkpoint: Mapping, task: str, source: str) -> Dict[str, torch.Tensor]:
    """Layer name (as saved) -> (E,) running share of ``task`` in a checkpoint's
    ``expert_usage_running`` (``ExpertUsageHook``); the rows of a layer follow the
    order of its ``router.weight.<task>`` keys in the checkpoint's state dict, so
    the checkpoint alone says which row is whose. ``source`` names it in errors."""
    state_dict = checkpoint.get('state_dict', checkpoint)
    out = {}
    for name, share in checkpoint['expert_usage_running'].items():
        prefix = f'{name}.router.weight.'
        tasks = [key[len(prefix):] for key in state_dict if key.startswith(prefix)]
        if task not in tasks:
            raise ValueError(f'task={task!r} has no router in layer {name} of '
                             f'{source}, whose tasks are {tasks}.')
        out[name] = torch.as_tensor(share)[tasks.index(task)]
    return out


def trained_experts(layers: Mapping[str, RoutedLayer],
                    cfg: TrainableConfig) -> Dict[str, List[int]]:
    """Routed layer name -> the expert ids ``cfg`` trains (layers with none left
    out)."""
    out = {}
    if cfg.mode == 'experts' and cfg.experts is not None:
        unknown = sorted(set(cfg.experts) - set(layers))
        if unknown:
            raise ValueError(f'trainable.experts names unknown layers {unknown}; the '
                             f'routed layers are {list(layers)}.')
        return {name: list(ids) for name, ids in cfg.experts.items() if len(ids)}
    if cfg.mode == 'experts':
        last = _per_kind(cfg.last, 'last')
        for name, layer in layers.items():
            m = last[_kind(layer)]
            if m is not None:
                m = _count(m, 'last', name, layer.num_experts)
                out[name] = list(range(layer.num_experts - m, layer.num_experts))
    elif cfg.mode == 'top_experts':
        top_n = _per_kind(cfg.top_n, 'top_n')
        usage = load_usage(cfg.usage, cfg.task)
        for name, layer in layers.items():
            n = top_n[_kind(layer)]
            if n is None:
                continue
            n = _count(n, 'top_n', name, layer.num_experts)
            if name not in usage:
                raise ValueError(f'The usage has no layer {name}; it has {list(usage)}.')
            if usage[name].shape != (layer.num_experts, ):
                raise ValueError(f'The usage of {name} has shape '
                                 f'{tuple(usage[name].shape)}, the layer '
                                 f'{layer.num_experts} experts.')
            try:
                ids = ExpertSelection(keep=n).select(usage[name], layer.top_k)
            except ValueError as error:
                raise ValueError(f'Layer {name}: {error}') from None
            out[name] = ids.tolist()
    return out


def task_parameters(backbone: nn.Module, task: str) -> List[nn.Parameter]:
    """The routers (every ``router.<param>.<task>``) and task embedding of ``task``."""
    params = [backbone.task_embed[task]] if backbone.task_embed is not None else []
    for layer in backbone.routed_layers().values():
        params += [d[task] for d in layer.router.children()
                   if isinstance(d, nn.ParameterDict) and task in d]
    return params


def apply_trainable(backbone: nn.Module, cfg: TrainableConfig) -> Dict[str, List[int]]:
    """Set ``requires_grad`` of a ModSquadViT's parameters as ``cfg`` says (every
    other backbone parameter but ``outputs.*`` frozen) and split the partly trained
    expert stacks.

    Returns:
        dict: Routed layer name -> the expert ids that train.
    """
    if cfg.mode == 'full':
        return {}
    layers = backbone.routed_layers()
    experts = trained_experts(layers, cfg)
    tasks = [] if cfg.mode in ('adapters', 'heads') else list(
        backbone.task_names if cfg.tasks is None else cfg.tasks)
    unknown = [task for task in tasks if task not in backbone.task_names]
    if unknown:
        raise ValueError(f'trainable.tasks names unknown tasks {unknown}; this '
                         f'ModSquadViT has tasks {list(backbone.task_names)}.')
    for name, param in backbone.named_parameters():
        if not name.startswith('outputs.'):
            param.requires_grad_(False)
    for task in tasks:
        for param in task_parameters(backbone, task):
            param.requires_grad_(True)
    if cfg.mode == 'adapters':
        adapters = adapter_modules(backbone)
        if not adapters:
            raise ValueError("trainable mode 'adapters' needs adapters: add "
                             "adapter=dict(type='vmt', dims=...) to the ModSquadViT.")
        for adapter in adapters.values():
            adapter.requires_grad_(True)
    for name, ids in experts.items():
        try:
            train_experts(layers[name], ids)
        except ValueError as error:
            raise ValueError(f'trainable experts of {name}: {error}') from None
    return experts


def count_parameters(model: nn.Module) -> Tuple[int, int]:
    """(trainable, total) parameter elements of ``model``."""
    params = list(model.parameters())
    return (sum(p.numel() for p in params if p.requires_grad),
            sum(p.numel() for p in params))


def parameter_summary(model: nn.Module) -> List[Tuple[str, int, int]]:
    """(part, trainable, total) parameter elements of each top-level part of
    ``model`` (the entries of a ``ModuleDict``, e.g. a multi-task model's
    ``branches.<task>``, each on its own), then ``'total'``."""
    rows = []
    for name, child in model.named_children():
        parts = child.items() if isinstance(child, nn.ModuleDict) else [('', child)]
        for key, part in parts:
            trainable, total = count_parameters(part)
            if total:
                rows.append((f'{name}.{key}' if key else name, trainable, total))
    own = list(model.parameters(recurse=False))
    if own:
        rows.append(('(own)', sum(p.numel() for p in own if p.requires_grad),
                     sum(p.numel() for p in own)))
    return rows + [('total', *count_parameters(model))]
