"""Extract one task of a multi-task checkpoint into a STOCK single-task model.

The authors' pruning (DESIGN.md section 1): per MoE layer, a task keeps the experts
it uses (:class:`mod_squad.moe.ExpertSelection`, by default a share of its top-k
picks above ``threshold / k``, at least k), and the task's model is those experts,
its router columns, its task embedding and its branch. Here that model is written
as what its toolbox expects: an mmdet / mmseg / mmpretrain config whose backbone is
a smaller single-task ``mod_squad.ModSquadViT`` (per-block expert counts), with the
task's val/test dataloader, evaluator, visualizer and runtime, and a checkpoint with
the stock model's keys (``backbone.*``, ``neck.*``, ``bbox_head.*``, ...), plain
tensors and plain-typed ``meta`` (loadable with ``weights_only=True``). Stock tools
and APIs (``DetInferencer``, ``MMSegInferencer``, ``ImageClassificationInferencer``,
``tools/test.py``) run it unchanged.

State dict of the extracted model, from the multi-task one:

- ``backbone.*`` from the shared backbone: stacked ``(E, ...)`` expert tensors
  (:meth:`RoutedLayer.expert_parameters`) indexed by the kept ids, the task's router
  columns (``router.weight.<task>`` (D, E), ``bias``, ``noise_weight``) likewise;
  the other tasks' routers and task embeddings dropped;
- ``backbone.outputs.*`` (``ln2``, ``pyramid``) from the task's view;
- everything else from ``branches.<task>.*``.

Usage sources (:func:`task_usage`): the checkpoint's running share
(``checkpoint['expert_usage_running']``, saved by ``ExpertUsageHook``: the authors'
statistic, an EMA of the training forwards' share of picks), a :class:`UsageReport`
(the cumulative picks over a val/test run, or a ``usage.json``).
"""
import copy
import os
import os.path as osp
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Union

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.fileio import dump
from mmengine.registry import DefaultScope, init_default_scope

from mod_squad.datasets import with_checked_dataset
from mod_squad.engine.toolbox_visualization import TOOLBOX_VISUALIZATION
from mod_squad.models import ModSquadMultiTaskModel
from mod_squad.models.fine_tuning import running_usage
from mod_squad.moe import ExpertSelection, MoAttention, RoutedLayer
from mod_squad.registry import toolbox_models
from .expert_usage import UsageReport, build_task_dataloaders, collect_usage

#: Router parameters with one entry per expert in their last dim (``hidden_*``
#: parameters of a 2-layer router are per hidden unit and copied whole).
ROUTER_EXPERT_PARAMS = ('weight', 'bias', 'noise_weight')
#: Backbone arguments the extracted ModSquadViT does not take over: its outputs
#: come from the task's view, its experts and k from the extraction, its weights
#: from the checkpoint (no pretrained initialisation).
REPLACED_BACKBONE_ARGS = ('type', 'out_type', 'out_indices', 'pyramid_scales',
                          'task_names', 'num_experts', 'top_k', 'num_attn_experts',
                          'attn_top_k', 'expert_hidden', 'attn_head_dims',
                          'inference_top_k', 'enabled_experts', 'trainable', 'init_cfg',
                          'pretrained')


@dataclass
class ExtractedModel:
    """One task's stock model: config, weights, and what was kept.

    Attributes:
        task (str): The task.
        kept (dict): Routed layer name (``'backbone.layers.1.ffn'``) -> kept expert
            ids of the multi-task layer, ascending (expert j of the extracted layer
            is ``kept[name][j]``).
        top_k (dict): Routed layer name -> experts per token of the extracted layer.
        config (Config): The stock config (``default_scope`` the toolbox's).
        model (nn.Module): The stock model of ``config`` with the extracted
            weights, in eval mode.
        dataset_meta (dict, optional): Classes (and palette) for the checkpoint's
            ``meta``, as the stock inferencers read them.
    """
    task: str
    kept: Dict[str, List[int]]
    top_k: Dict[str, int]
    config: Config
    model: nn.Module
    dataset_meta: Optional[dict] = None

    @property
    def scope(self) -> str:
        return self.config.default_scope

    def checkpoint(self, **meta) -> dict:
        """``dict(meta=..., state_dict=...)``: plain tensors and plain-typed meta
        (``dataset_meta``, ``mod_squad``: task, kept sets, k, and ``meta``)."""
        info = dict(task=self.task, kept=self.kept, top_k=self.top_k, **meta)
        checkpoint_meta = dict(mod_squad=info)
        if self.dataset_meta is not None:
            checkpoint_meta['dataset_meta'] = self.dataset_meta
        return dict(
            meta=checkpoint_meta,
            state_dict={k: v.detach().cpu() for k, v in self.model.state_dict().items()})

    def save(self, out_dir: str, name: Optional[str] = None, **meta) -> Dict[str, str]:
        """Write ``{name}.py`` (config), ``{name}.pth`` (checkpoint) and
        ``{name}_kept.json`` (kept experts and k per layer) to ``out_dir``; ``name``
        defaults to ``{task}_extracted``. Returns the three paths by kind."""
        name = name or f'{self.task}_extracted'
        os.makedirs(out_dir, exist_ok=True)
        paths = {kind: osp.join(out_dir, f'{name}{suffix}') for kind, suffix in (
            ('config', '.py'), ('checkpoint', '.pth'), ('kept', '_kept.json'))}
        self.config.dump(paths['config'])
        torch.save(self.checkpoint(**meta), paths['checkpoint'])
        dump(dict(task=self.task, kept=self.kept, top_k=self.top_k, **meta),
             paths['kept'], indent=1)
        return paths


def task_routed_layers(model: ModSquadMultiTaskModel,
                       task: str) -> Dict[str, RoutedLayer]:
    """The routed layers of ``model``'s shared backbone by module name
    (``'backbone.layers.1.ffn'``); ValueError naming the tasks for an unknown one."""
    if not isinstance(model, ModSquadMultiTaskModel):
        raise TypeError('Extraction takes a ModSquadMultiTaskModel (a combined '
                        f'config\'s model), got {type(model).__name__}.')
    if task not in model.task_names:
        raise ValueError(f'Unknown task {task!r}; the model has tasks '
                         f'{list(model.task_names)}.')
    return {f'backbone.{name}': layer
            for name, layer in model.backbone.routed_layers().items()}


#: ``--usage`` values that are not a usage.json path.
USAGE_SOURCES = ('auto', 'running', 'val', 'test')


def load_usage(spec: str, model: ModSquadMultiTaskModel, cfg: Config,
               checkpoint: Mapping, tasks: List[str],
               max_batches: Optional[int] = None) -> Union[UsageReport, Mapping]:
    """The usage source ``spec`` names, for :func:`task_usage`.

    Args:
        spec (str): ``'running'``: the checkpoint's running share (the authors'
            statistic); ``'val'`` / ``'test'``: the top-k picks of ``tasks`` on that
            split (:func:`collect_usage`); a path: a ``usage.json`` of
            ``tools/analysis_tools/expert_usage.py``; ``'auto'``: running if the
            checkpoint has it, else val.
        model, cfg, checkpoint: The multi-task model, its config and the loaded
            checkpoint dict.
        tasks (list[str]): Tasks to run for ``'val'`` / ``'test'``.
        max_batches (int, optional): Batches per task for ``'val'`` / ``'test'``.
    """
    if spec == 'auto':
        spec = 'running' if 'expert_usage_running' in checkpoint else 'val'
    if spec == 'running':
        return checkpoint
    if spec in ('val', 'test'):
        return collect_usage(model, build_task_dataloaders(cfg, spec, tasks),
                             max_batches, f'{spec} split')
    if not osp.isfile(spec):
        raise FileNotFoundError(f'--usage {spec!r} is neither one of {USAGE_SOURCES} '
                                'nor a usage.json file.')
    return UsageReport.load(spec)


def task_usage(source: Union[UsageReport, Mapping], model: ModSquadMultiTaskModel,
               task: str) -> Dict[str, torch.Tensor]:
    """Routed layer name -> (E,) usage of ``task``.

    Args:
        source (UsageReport | dict): A :class:`UsageReport` (its top-k picks), or a
            checkpoint holding ``expert_usage_running`` (layer -> (T, E) running
            share, read by :func:`~mod_squad.models.fine_tuning.running_usage`).
        model (ModSquadMultiTaskModel): The model the usage is of.
        task (str): The task.
    """
    layers = task_routed_layers(model, task)
    if isinstance(source, UsageReport):
        if task not in source.tasks:
            raise ValueError(f'The usage report has no task {task!r}; its tasks are '
                             f'{source.tasks}.')
        t = source.tasks.index(task)
        usage = {layer.name: layer.counts[t] for layer in source.layers}
        what = f'usage report ({source.source})'
    else:
        if 'expert_usage_running' not in source:
            raise ValueError(
                "The checkpoint has no 'expert_usage_running' (saved by "
                'ExpertUsageHook during training): collect the usage on a split '
                'instead (--usage val).')
        what = "checkpoint's expert_usage_running"
        usage = running_usage(source, task, f'the {what}')
    missing = [name for name in layers if name not in usage]
    if missing:
        raise ValueError(f'The {what} has no usage of layers {missing}.')
    for name, layer in layers.items():
        if usage[name].shape != (layer.num_experts, ):
            raise ValueError(f'The {what} of layer {name!r} has {usage[name].numel()} '
                             f'experts, the model {layer.num_experts}.')
    return {name: usage[name] for name in layers}


def select_experts(model: ModSquadMultiTaskModel, task: str,
                   usage: Mapping[str, torch.Tensor],
                   selection: Optional[ExpertSelection] = None) -> Dict[str, List[int]]:
    """Routed layer name -> expert ids ``task`` keeps under ``selection`` (default:
    the authors' threshold 3), at least the task's k of the layer."""
    layers = task_routed_layers(model, task)
    selection = selection or ExpertSelection()
    try:
        kept = selection.select_layers(
            {name: (usage[name], layer.top_k_of(task)) for name, layer in layers.items()})
    except ValueError as error:
        raise ValueError(f'Task {task!r}: {error}') from None
    return {name: ids.tolist() for name, ids in kept.items()}


def _extracted_top_k(layers: Mapping[str, RoutedLayer], task: str,
                     kept: Mapping[str, List[int]],
                     top_k: Union[None, int, dict]) -> Dict[str, int]:
    """Layer name -> k of the extracted layer: ``top_k`` (an int, or per kind
    ``dict(mlp=..., attn=...)``), else the task's k in the multi-task model; checks
    the kept sets (known layers, valid unique ids, at least k)."""
    if isinstance(top_k, dict):
        unknown = sorted(set(top_k) - {'mlp', 'attn'})
        if unknown:
            raise ValueError(f'top_k has unknown layer kinds {unknown}; valid kinds are '
                             "['attn', 'mlp'].")
    missing = [name for name in layers if name not in kept]
    unknown = [name for name in kept if name not in layers]
    if missing or unknown:
        raise ValueError(f'Kept experts must name every routed layer: missing '
                         f'{missing}, unknown {unknown}.')
    ks = {}
    for name, layer in layers.items():
        kind = 'attn' if isinstance(layer, MoAttention) else 'mlp'
        k = top_k.get(kind) if isinstance(top_k, dict) else top_k
        k = layer.top_k_of(task) if k is None else k
        ids = list(kept[name])
        if len(set(ids)) != len(ids) or any(
                not 0 <= e < layer.num_experts for e in ids):
            raise ValueError(f'Layer {name!r}: kept experts {ids} must be unique ids '
                             f'in [0, {layer.num_experts}).')
        if len(ids) < k:
            raise ValueError(
                f'Layer {name!r}: {len(ids)} kept experts {ids} are fewer than the '
                f'k={k} experts per token of task {task!r}; keep at least k or lower '
                'k (top_k).')
        ks[name] = k
    return ks


def _strip_scope(cfg, scope: str):
    """``cfg`` without the ``_scope_`` keys equal to ``scope`` (a stock config has
    ``default_scope`` instead)."""
    if isinstance(cfg, dict):
        return {k: _strip_scope(v, scope) for k, v in cfg.items()
                if not (k == '_scope_' and v == scope)}
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(_strip_scope(v, scope) for v in cfg)
    return cfg


def _backbone_config(model_cfg: dict, task: str, layers: Mapping[str, RoutedLayer],
                     kept: Mapping[str, List[int]], top_k: Mapping[str, int],
                     num_layers: int) -> dict:
    """The extracted ModSquadViT config: the shared backbone's settings, the task's
    view's outputs, per-block expert counts and k, explicit expert widths."""
    shared = dict(model_cfg['backbone'])
    view = dict(model_cfg['branches'][task]['backbone'])
    norm_cfg = shared.get('norm_cfg', dict(type='LN', eps=1e-6))
    view_norm = view.get('norm_cfg', norm_cfg)
    if view.get('out_type') == 'avg_featmap' and view_norm != norm_cfg:
        raise ValueError(f'Task {task!r}: its view\'s norm_cfg {view_norm} differs '
                         f'from the backbone\'s {norm_cfg}; a single-task ModSquadViT '
                         'has one norm_cfg.')
    counts = dict(num_experts=[None] * num_layers, top_k=[None] * num_layers,
                  num_attn_experts=[None] * num_layers, attn_top_k=[None] * num_layers)
    widths = dict(expert_hidden=set(), attn_head_dims=set())
    for name, layer in layers.items():
        block = int(name.split('.')[2])  # 'backbone.layers.<i>.<part>'
        if isinstance(layer, MoAttention):
            counts['num_attn_experts'][block] = len(kept[name])
            counts['attn_top_k'][block] = top_k[name]
            widths['attn_head_dims'].add(layer.head_dims)
        else:
            counts['num_experts'][block] = len(kept[name])
            counts['top_k'][block] = top_k[name]
            widths['expert_hidden'].add(layer.experts.w1.shape[-1])
    backbone = {k: v for k, v in shared.items() if k not in REPLACED_BACKBONE_ARGS}
    backbone.update(
        type='mod_squad.ModSquadViT',
        task_names=(task, ),
        out_type=view.get('out_type', 'cls_token'),
        out_indices=view.get('out_indices', -1))
    if 'pyramid_scales' in view:
        backbone['pyramid_scales'] = view['pyramid_scales']
    for arg, values in counts.items():
        if any(v is not None for v in values):
            backbone[arg] = values
    for arg, values in widths.items():
        if len(values) > 1:
            raise ValueError(f'The experts of the backbone have several {arg} '
                             f'{sorted(values)}; ModSquadViT takes one.')
        if values:
            backbone[arg] = values.pop()
    router_cfg = dict(shared.get('router_cfg') or {})
    if router_cfg.get('aux_loss'):  # the mutual information of one task is 0
        router_cfg['aux_loss'] = dict(router_cfg['aux_loss'], mi_weight=0.)
        backbone['router_cfg'] = router_cfg
    return backbone


def extracted_config(cfg: Config, task: str, backbone: dict) -> Config:
    """The stock config of ``task``: its branch (``_scope_`` removed) with
    ``backbone``, its val/test dataloader and evaluator, stock loops, hooks,
    visualizer and the combined config's runtime settings."""
    branch = dict(cfg.model['branches'][task])
    scope = branch.get('_scope_')
    if scope not in TOOLBOX_VISUALIZATION:
        raise ValueError(f'Branch {task!r} has _scope_={scope!r}; extraction writes '
                         f'configs for {sorted(TOOLBOX_VISUALIZATION)}.')
    visualizer = TOOLBOX_VISUALIZATION[scope]['visualizer']['type']
    vis_hook = TOOLBOX_VISUALIZATION[scope]['hook']['type']
    stock = dict(
        default_scope=scope,
        custom_imports=dict(imports=['mod_squad'], allow_failed_imports=False),
        model=dict(branch, backbone=backbone))
    for split in ('val', 'test'):
        for kind in ('dataloader', 'evaluator'):
            per_task = cfg.get(f'{split}_{kind}')
            if per_task is None or task not in per_task:
                raise ValueError(f'{split}_{kind} of the config has no task {task!r}.')
            stock[f'{split}_{kind}'] = _stock_dataloader(per_task[task]) if (
                kind == 'dataloader') else per_task[task]
    log_interval = cfg.get('default_hooks', {}).get('logger', {}).get('interval', 50)
    stock.update(
        val_cfg=dict(type='ValLoop'),
        test_cfg=dict(type='TestLoop'),
        default_hooks=dict(
            timer=dict(type='IterTimerHook'),
            logger=dict(type='LoggerHook', interval=log_interval),
            param_scheduler=dict(type='ParamSchedulerHook'),
            checkpoint=dict(type='CheckpointHook', interval=1),
            sampler_seed=dict(type='DistSamplerSeedHook'),
            visualization=dict(type=vis_hook)),
        visualizer=dict(type=visualizer, vis_backends=[dict(type='LocalVisBackend')],
                        name='visualizer'),
        log_level=cfg.get('log_level', 'INFO'),
        load_from=None,
        resume=False)
    for key in ('env_cfg', 'log_processor', 'randomness'):
        if cfg.get(key) is not None:
            stock[key] = cfg[key]
    return Config(_strip_scope(copy.deepcopy(Config(stock).to_dict()), scope))


def _stock_dataloader(dataloader: dict) -> dict:
    """``dataloader`` without ``collate_fn=dict(type='pseudo_collate')``: it is the
    runner's default, and mmengine's inferencers (``_init_collate``) take only a
    name there, as stock configs leave it out."""
    collate = dataloader.get('collate_fn')
    if isinstance(collate, dict) and collate.get('type') == 'pseudo_collate':
        dataloader = {k: v for k, v in dataloader.items() if k != 'collate_fn'}
    return dataloader


def _source_key(key: str, task: str) -> str:
    """The multi-task model's key of the stock model's ``key``."""
    if key.startswith('backbone.outputs.'):
        return f'branches.{task}.{key}'
    if key.startswith('backbone.'):
        return key
    return f'branches.{task}.{key}'


def _expert_slices(layers: Mapping[str, RoutedLayer], task: str,
                   kept: Mapping[str, List[int]]) -> Dict[str, tuple]:
    """Multi-task key -> (dim, kept ids) of every per-expert tensor: stacked expert
    parameters along 0, the task's router columns along -1."""
    slices = {}
    for name, layer in layers.items():
        ids = torch.tensor(kept[name])
        params = {id(p) for p in layer.expert_parameters()}
        for pname, param in layer.named_parameters():
            if id(param) in params:
                slices[f'{name}.{pname}'] = (0, ids)
        for pname in ROUTER_EXPERT_PARAMS:
            if getattr(layer.router, pname, None) is not None:
                slices[f'{name}.router.{pname}.{task}'] = (-1, ids)
    return slices


def extracted_state_dict(target: nn.Module, source: Mapping[str, torch.Tensor],
                         task: str, layers: Mapping[str, RoutedLayer],
                         kept: Mapping[str, List[int]]) -> Dict[str, torch.Tensor]:
    """``target``'s (the built stock model's) state dict filled from the multi-task
    ``source`` state dict (see the module doc); errors name missing keys and shape
    mismatches."""
    slices = _expert_slices(layers, task, kept)
    out, missing = {}, []
    for key, value in target.state_dict().items():
        src = _source_key(key, task)
        if src not in source:
            missing.append(src)
            continue
        tensor = source[src]
        if src in slices:
            dim, ids = slices[src]
            tensor = tensor.index_select(dim, ids.to(tensor.device))
        if tensor.shape != value.shape:
            raise ValueError(f'{src} of shape {tuple(tensor.shape)} does not fit '
                             f'{key} of the extracted model, {tuple(value.shape)}.')
        out[key] = tensor.clone()
    if missing:
        tasks = sorted({k.rsplit('.', 1)[-1] for k in source if '.router.weight.' in k})
        raise ValueError(f'The checkpoint has no weights for task {task!r} at '
                         f'{missing[:5]}{" ..." if len(missing) > 5 else ""} '
                         f'({len(missing)} keys); its routers are of tasks {tasks}.')
    return out


def build_stock_model(config: Config) -> nn.Module:
    """The model of a stock config, built in its toolbox's scope (as its runner)."""
    scope = config.default_scope
    init_default_scope(scope)
    with DefaultScope.overwrite_default_scope(scope):
        return toolbox_models(scope).build(config.model)


def extract_task_model(cfg: Config,
                       model: ModSquadMultiTaskModel,
                       task: str,
                       kept: Mapping[str, List[int]],
                       top_k: Union[None, int, dict] = None,
                       state_dict: Optional[Mapping[str, torch.Tensor]] = None,
                       dataset_meta: Optional[dict] = None) -> ExtractedModel:
    """Extract ``task`` of a multi-task model into a stock single-task model.

    Args:
        cfg (Config): The combined config ``model`` was built from.
        model (ModSquadMultiTaskModel): The multi-task model (its structure and the
            task's k per layer; weights from ``state_dict``).
        task (str): The task.
        kept (Mapping[str, list[int]]): Routed layer name -> expert ids to keep
            (:func:`select_experts`), at least k each.
        top_k (int | dict, optional): Experts per token of the extracted layers, or
            ``dict(mlp=..., attn=...)``; default: the task's k in ``model``.
        state_dict (Mapping, optional): Weights (default: ``model.state_dict()``).
        dataset_meta (dict, optional): Classes / palette for the checkpoint meta.

    Returns:
        ExtractedModel: Config, model (built from the config, the weights loaded
        strictly) and the kept sets.
    """
    layers = task_routed_layers(model, task)
    kept = {name: sorted(int(e) for e in ids) for name, ids in kept.items()}
    ks = _extracted_top_k(layers, task, kept, top_k)
    backbone = _backbone_config(cfg.model, task, layers, kept, ks,
                                model.backbone.num_layers)
    config = extracted_config(cfg, task, backbone)
    target = build_stock_model(config)
    weights = extracted_state_dict(
        target, model.state_dict() if state_dict is None else state_dict, task, layers,
        kept)
    target.load_state_dict(weights, strict=True)
    return ExtractedModel(task, kept, ks, config, target.eval(),
                          None if dataset_meta is None else plain_meta(dataset_meta))


def task_dataset_meta(cfg: Config, task: str, split: str = 'test') -> dict:
    """The metainfo (classes, palette, ...) of ``task``'s ``{split}_dataloader``
    dataset, built and checked, in plain types (:func:`plain_meta`)."""
    loaders = cfg.get(f'{split}_dataloader') or {}
    if task not in loaders:
        raise ValueError(f'{split}_dataloader of the config has no task {task!r}.')
    return plain_meta(with_checked_dataset(task, loaders[task])['dataset'].metainfo)


def plain_meta(meta):
    """``meta`` with only plain types (str, numbers, bool, None, lists, tuples,
    dicts of them), as ``torch.load(weights_only=True)`` reads them; numpy values
    become lists, other values are dropped."""
    if isinstance(meta, dict):
        out = {k: plain_meta(v) for k, v in meta.items()}
        return {k: v for k, v in out.items() if v is not _DROP}
    if isinstance(meta, (list, tuple)):
        return type(meta)(v for v in map(plain_meta, meta) if v is not _DROP)
    if meta is None or isinstance(meta, (str, int, float, bool)):
        return meta
    if hasattr(meta, 'tolist'):
        return meta.tolist()
    return _DROP


_DROP = object()
