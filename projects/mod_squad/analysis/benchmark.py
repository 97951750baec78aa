"""ModSquadViT models side by side with the stock mmpretrain / mmdet / mmseg models,
measured in one process.

A :class:`Comparison` lists models (:class:`ModelSpec`), the first one the
baseline. A model is one config, or several deployed together (the three stock
single-task models against the joint model); a multi-task model runs each of its
tasks. Each (model, task) is a *unit*; a model's figures add up its units:

- inference latency (ms): ``test_step`` (preprocessor, forward, post-processing) of
  one image per task, no grad; throughput (images/s; image sets/s for several
  tasks): ``batch_size`` images per task through ``test_step``;
- train step (ms): ``train_step`` (preprocessor, forward, backward, AdamW step of
  mmengine's ``OptimWrapper``; under bf16 autocast with ``amp``, which needs no loss
  scale and so runs on CPU too; inference stays fp32, as mmcv's ``nms`` takes no
  bf16) on ``batch_size`` images per task with random ground truth;
- peak memory (MiB, the largest of the units'): one train step after warm-up, above
  what was allocated before it (:func:`mod_squad.timing.peak_memory_mib`);
- parameters one deploys (total; the sum over the configs) and active per token,
  summed over the tasks; FLOPs of one image per task, all experts and active
  (:func:`~mod_squad.analysis.complexity.analyze_complexity`, auxiliary heads
  dropped as mmseg's get_flops does); ``None`` ("n/a") where the trace fails, with
  the reason kept.

All the steps of a comparison's models are timed interleaved
(:func:`mod_squad.timing.time_interleaved`: warm-up, median over rounds), and
every figure gets its ratio to the baseline's of the same run.
"""
import copy
import json
import platform
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.hub import get_config
from mmengine.optim import OptimWrapper
from mmengine.structures import PixelData
from mmengine.utils import ProgressBar

from mod_squad.engine.launch import read_config
from mod_squad.models import ModSquadMultiTaskModel
from mod_squad.timing import peak_memory_mib, time_interleaved
from .builder import build_model
from .complexity import (analyze_dummy_image, count_parameters, data_sample_type,
                         drop_auxiliary_heads, model_tasks, task_branch)

#: (H, W) per kind of task: the toolboxes' standard inputs, and smaller ones for CPU.
STANDARD_SIZES = dict(cls=(224, 224), det=(800, 1333), seg=(512, 512))
SMALL_SIZES = dict(cls=(112, 112), det=(320, 512), seg=(256, 256))
#: The kind of task of each toolbox's models.
TOOLBOX_KINDS = dict(mmpretrain='cls', mmdet='det', mmseg='seg')
#: The figures of a model and their column titles.
METRICS = {
    'latency_ms': 'latency ms',
    'throughput': 'throughput img/s',
    'train_step_ms': 'train step ms',
    'peak_memory_mib': 'peak memory MiB',
    'params_total': 'params total',
    'params_active': 'params active',
    'flops_total': 'FLOPs total',
    'flops_active': 'FLOPs active',
}


@dataclass
class BenchmarkSettings:
    """How to measure.

    Attributes:
        sizes (dict): (H, W) of the images of each kind of task (cls, det, seg).
        batch_size (int): Images per task of a throughput or train step.
        warmup (int): Runs of every step before the timed rounds.
        rounds (int): Interleaved rounds; a step's time is the median of rounds.
        iters (int): Runs of a step per round.
        device (str): Where the models run.
        amp (bool): bf16 autocast of the training steps.
        memory (bool): Measure peak memory.
        flops (bool): Count FLOPs (the parameters are counted anyway).
        progress (bool): Show a progress bar.
    """
    sizes: Dict[str, Tuple[int, int]] = field(
        default_factory=lambda: dict(STANDARD_SIZES))
    batch_size: int = 2
    warmup: int = 2
    rounds: int = 5
    iters: int = 1
    device: str = 'cpu'
    amp: bool = False
    memory: bool = True
    flops: bool = True
    progress: bool = True

    def __post_init__(self):
        sizes = {}
        for kind, size in self.sizes.items():
            size = (size, size) if isinstance(size, int) else tuple(size)
            if kind not in STANDARD_SIZES or len(size) != 2:
                raise ValueError(f'sizes: {kind}={size} is not one of '
                                 f'{sorted(STANDARD_SIZES)} = (H, W) or a side.')
            sizes[kind] = size
        self.sizes = sizes


@dataclass
class ModelSpec:
    """One model of a comparison: ``configs`` are deployed together; each is a
    config path (``mmdet::...`` for a toolbox's own) or ``dict(config=path,
    cfg_options={...})``."""
    label: str
    configs: List[Union[str, dict]]

    def load(self) -> List[Config]:
        """The configs, with their ``cfg_options`` merged in."""
        cfgs = []
        for entry in self.configs:
            entry = dict(config=entry) if isinstance(entry, str) else dict(entry)
            unknown = sorted(set(entry) - {'config', 'cfg_options'})
            if unknown:
                raise ValueError(f'Model {self.label!r}: unknown keys {unknown} in a '
                                 'config entry; use config and cfg_options.')
            path = entry['config']
            cfg = get_config(path) if '::' in path else read_config(path)
            if entry.get('cfg_options'):
                cfg.merge_from_dict(entry['cfg_options'])
            cfgs.append(cfg)
        return cfgs


@dataclass
class Comparison:
    """Models measured together; the first is the baseline of the ratios."""
    name: str
    models: List[ModelSpec]

    @classmethod
    def from_dict(cls, cfg: dict) -> 'Comparison':
        """``dict(name=..., models=[dict(label=..., configs=[...]), ...])``."""
        models = [ModelSpec(m['label'], list(m['configs'])) for m in cfg['models']]
        if len(models) < 2:
            raise ValueError(f'Comparison {cfg["name"]!r} needs a baseline and at '
                             f'least one model, got {len(models)}.')
        return cls(cfg['name'], models)


def task_kind(model: nn.Module, task: Optional[str]) -> str:
    """'cls', 'det' or 'seg': the toolbox of the model (of ``task``'s branch)."""
    branch = task_branch(model, task)
    toolbox = type(branch).__module__.split('.')[0]
    if toolbox not in TOOLBOX_KINDS:
        raise TypeError(f'{type(branch).__name__} is not an mmpretrain, mmdet or '
                        'mmseg model: the benchmark runs those.')
    return TOOLBOX_KINDS[toolbox]


def _num_classes(branch: nn.Module, kind: str) -> int:
    if kind == 'cls':
        return branch.head.num_classes
    if kind == 'det':
        roi_head = getattr(branch, 'roi_head', None)
        return (branch.bbox_head if roi_head is None else roi_head.bbox_head).num_classes
    return branch.decode_head.num_classes


def synthetic_batch(model: nn.Module, task: Optional[str], kind: str,
                    shape: Tuple[int, int], batch_size: int,
                    with_labels: bool) -> dict:
    """``batch_size`` random (3, H, W) uint8 images (seed 0) with the toolbox's data
    samples, and random ground truth if ``with_labels`` (cls: a label; det: three
    boxes, with masks for a mask head, from ``mmdet.testing.demo_mm_inputs``; seg:
    a (1, H, W) label map). A multi-task model's batch carries ``task``."""
    branch = task_branch(model, task)
    generator = torch.Generator().manual_seed(0)
    height, width = shape
    if kind == 'det':
        from mmdet.testing import demo_mm_inputs
        data = demo_mm_inputs(
            batch_size, (3, height, width), num_items=[3] * batch_size,
            num_classes=_num_classes(branch, kind),
            with_mask=with_labels and getattr(branch, 'with_mask', False))
        if not with_labels:
            for sample in data['data_samples']:
                del sample.gt_instances
    else:
        data = dict(inputs=[], data_samples=[])
        num_classes = _num_classes(branch, kind)
        for _ in range(batch_size):
            data['inputs'].append(torch.randint(
                0, 256, (3, height, width), dtype=torch.uint8, generator=generator))
            meta = dict(ori_shape=shape, img_shape=shape, pad_shape=shape,
                        scale_factor=(1., 1.))
            sample = data_sample_type(branch)(metainfo=meta)
            if with_labels and kind == 'cls':
                sample.set_gt_label(int(torch.randint(num_classes, (1, ),
                                                      generator=generator)))
            elif with_labels:
                sample.gt_sem_seg = PixelData(data=torch.randint(
                    0, num_classes, (1, height, width), generator=generator))
            data['data_samples'].append(sample)
    if isinstance(model, ModSquadMultiTaskModel):
        data['task'] = task
    return data


@dataclass
class Unit:
    """One task of one built model: what its steps run."""
    model: nn.Module
    task: Optional[str]
    kind: str


def build_units(spec: ModelSpec, device: str) -> List[Unit]:
    """Build the configs of ``spec`` (seed 0, in their default scope, weights as
    constructed) and list their tasks."""
    units = []
    for cfg in spec.load():
        torch.manual_seed(0)
        model = build_model(cfg, device=device)
        units += [Unit(model, task, task_kind(model, task))
                  for task in model_tasks(model)]
    return units


def _optim_wrapper(model: nn.Module) -> OptimWrapper:
    return OptimWrapper(torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05))


def unit_steps(unit: Unit, settings: BenchmarkSettings,
               optim_wrapper: OptimWrapper) -> Dict[str, Callable[[], None]]:
    """``latency`` (one image, test_step), ``throughput`` (``batch_size`` images,
    test_step) and ``train`` (``batch_size`` images, train_step) of ``unit``. An
    mmseg preprocessor's crop ``size`` becomes the benchmark's image size."""
    shape = tuple(settings.sizes[unit.kind])
    device = torch.device(settings.device).type
    model = unit.model
    branch = task_branch(model, unit.task)
    if getattr(branch.data_preprocessor, 'size', None) is not None:
        branch.data_preprocessor.size = shape  # mmseg pads training batches to it

    def test_step(data):

        def step():
            model.eval()
            with torch.no_grad():
                model.test_step(data)

        return step

    def train_step():
        model.train()
        # bf16 needs no loss scale, so it runs on CPU too
        with torch.autocast(device, torch.bfloat16, enabled=settings.amp):
            model.train_step(train_data, optim_wrapper)

    batch = lambda n, labels: synthetic_batch(  # noqa: E731
        model, unit.task, unit.kind, shape, n, labels)
    train_data = batch(settings.batch_size, True)
    return dict(latency=test_step(batch(1, False)),
                throughput=test_step(batch(settings.batch_size, False)),
                train=train_step)


@dataclass
class ModelResult:
    """A model's figures (None: not measured or n/a, see ``notes``) and their
    ratios to the baseline's."""
    label: str
    configs: List[str]
    tasks: List[str]
    metrics: Dict[str, Optional[float]]
    ratios: Dict[str, Optional[float]] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)


@dataclass
class ComparisonResult:
    name: str
    baseline: str
    models: List[ModelResult]


def _complexity(units: List[Unit], settings: BenchmarkSettings,
                notes: List[str]) -> Dict[str, Optional[float]]:
    """Parameters (total: of the distinct models; active: summed over the units)
    and FLOPs of one image per unit, on copies of the models without auxiliary
    heads."""
    copies = {id(u.model): drop_auxiliary_heads(copy.deepcopy(u.model)) for u in units}
    units = [Unit(copies[id(u.model)], u.task, u.kind) for u in units]
    distinct = {id(u.model): u for u in units}.values()
    out = dict(
        params_total=sum(count_parameters(u.model, u.task).total for u in distinct),
        params_active=sum(count_parameters(u.model, u.task).active for u in units),
        flops_total=None, flops_active=None)
    if not settings.flops:
        notes.append('FLOPs not counted (flops=False)')
        return out
    total = active = 0
    for unit in units:
        try:
            result = analyze_dummy_image(unit.model, unit.task,
                                         settings.sizes[unit.kind])
        except Exception as e:  # report the trace's failure as n/a
            notes.append(f'FLOPs n/a for task {unit.task or unit.kind}: '
                         f'{type(e).__name__}: {e}')
            return out
        total += result.all_experts_flops
        active += result.flops
    return dict(out, flops_total=total, flops_active=active)


def _ratios(metrics: Dict[str, Optional[float]],
            baseline: Dict[str, Optional[float]]) -> Dict[str, Optional[float]]:
    return {
        key: value / baseline[key] if value is not None and baseline[key] else None
        for key, value in metrics.items()
    }


def _config_name(entry: Union[str, dict]) -> str:
    return entry if isinstance(entry, str) else entry['config']


def run_comparison(comparison: Comparison,
                   settings: BenchmarkSettings) -> ComparisonResult:
    """Build every model of ``comparison``, time all their steps interleaved,
    measure memory, count parameters and FLOPs; ratios to the first model."""
    units = {spec.label: build_units(spec, settings.device) for spec in comparison.models}
    optim_wrappers = {id(u.model): _optim_wrapper(u.model)
                      for us in units.values() for u in us}
    steps = {(label, i, kind): step
             for label, us in units.items() for i, unit in enumerate(us)
             for kind, step in unit_steps(
                 unit, settings, optim_wrappers[id(unit.model)]).items()}
    num_units = sum(map(len, units.values()))
    bar = ProgressBar(len(steps) * (settings.warmup + settings.rounds * settings.iters)
                      + 2 * num_units) if settings.progress else None
    update = bar.update if bar is not None else None
    # counted before training steps change the weights (a two-stage detector's
    # FLOPs depend on its proposals)
    notes = {label: [] for label in units}  # per model, shown under the table
    complexity = {label: _complexity(us, settings, notes[label])
                  for label, us in units.items()}
    if update is not None:
        update(num_units)
    times = time_interleaved(steps, settings.warmup, settings.rounds, settings.iters,
                             torch.device(settings.device), on_step=update)
    results = []
    for spec in comparison.models:
        us = units[spec.label]
        ms = {kind: sum(times[(spec.label, i, kind)] for i in range(len(us)))
              for kind in ('latency', 'throughput', 'train')}
        peak = None
        if settings.memory:
            peak = max(peak_memory_mib(steps[(spec.label, i, 'train')], settings.device)
                       for i in range(len(us)))
        else:
            notes[spec.label].append('peak memory not measured (memory=False)')
        if update is not None:
            update(len(us))
        metrics = dict(latency_ms=ms['latency'],
                       throughput=settings.batch_size * 1e3 / ms['throughput'],
                       train_step_ms=ms['train'], peak_memory_mib=peak,
                       **complexity[spec.label])
        results.append(ModelResult(
            spec.label, [_config_name(c) for c in spec.configs],
            [u.task or u.kind for u in us], metrics, notes=notes[spec.label]))
    for result in results:
        result.ratios = _ratios(result.metrics, results[0].metrics)
    if bar is not None:
        print()
    return ComparisonResult(comparison.name, results[0].label, results)


def _cpu_name() -> str:
    """The processor's model name (Linux ``/proc/cpuinfo``), else its architecture."""
    try:
        with open('/proc/cpuinfo') as f:
            names = [line.split(':', 1)[1].strip() for line in f
                     if line.startswith('model name')]
    except OSError:
        names = []
    return names[0] if names else platform.machine()


def environment(settings: BenchmarkSettings) -> dict:
    """What ran the benchmark: torch, device, threads, processor."""
    device = torch.device(settings.device)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else _cpu_name()
    return dict(torch=torch.__version__, device=str(device), device_name=name,
                threads=torch.get_num_threads())


def run_benchmark(comparisons: Sequence[Comparison],
                  settings: BenchmarkSettings) -> dict:
    """Every comparison in turn: a JSON-able report of the settings, the
    environment and each model's figures and ratios."""
    results = [run_comparison(c, settings) for c in comparisons]
    return dict(settings=asdict(settings), environment=environment(settings),
                comparisons=[asdict(r) for r in results])


def load_comparisons(cfg: Config, names: Optional[Sequence[str]] = None
                     ) -> List[Comparison]:
    """The ``comparisons`` of a benchmark config, or those named ``names``."""
    comparisons = [Comparison.from_dict(c) for c in cfg.comparisons]
    if names is None:
        return comparisons
    known = [c.name for c in comparisons]
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f'Unknown comparisons {unknown} in {cfg.filename}; it has '
                         f'{known}.')
    return [c for c in comparisons if c.name in names]


def _cell(key: str, value: Optional[float], ratio: Optional[float]) -> str:
    if value is None:
        return 'n/a'
    if key.startswith('params'):
        text = f'{value / 1e6:.3g}M'
    elif key.startswith('flops'):
        text = f'{value / 1e9:.3g}G'
    else:
        text = f'{value:.1f}' if value >= 10 else f'{value:.2f}'
    return text if ratio is None else f'{text} ({ratio:.2f}x)'


def markdown_table(report: dict) -> str:
    """One row per model: every metric with its ratio to its comparison's baseline."""
    header = ['comparison', 'model', 'tasks'] + list(METRICS.values())
    rows = [header, ['---'] * len(header)]
    for comparison in report['comparisons']:
        for model in comparison['models']:
            rows.append(
                [comparison['name'], model['label'], ' + '.join(model['tasks'])] +
                [_cell(key, model['metrics'][key], model['ratios'].get(key))
                 for key in METRICS])
    lines = ['| ' + ' | '.join(row) + ' |' for row in rows]
    notes = [f'- {m["label"]} ({c["name"]}): {note}' for c in report['comparisons']
             for m in c['models'] for note in m['notes']]
    return '\n'.join(lines + ([''] + notes if notes else []))


def summary(report: dict) -> str:
    """The settings and environment in one line, for above the table."""
    s, env = report['settings'], report['environment']
    sizes = ', '.join(f'{k} {h}x{w}' for k, (h, w) in s['sizes'].items())
    return (f'torch {env["torch"]}, {env["device"]} ({env["device_name"]}), '
            f'{env["threads"]} threads, amp={s["amp"]}; images {sizes}; batch '
            f'{s["batch_size"]}; median of {s["rounds"]} interleaved rounds x '
            f'{s["iters"]} after {s["warmup"]} warm-up runs; ratios to the first '
            'model of each comparison.')


def dump_report(report: dict, path: str) -> None:
    with open(path, 'w') as f:
        json.dump(report, f, indent=2)
