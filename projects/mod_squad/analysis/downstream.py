"""The downstream table: fine-tuning runs of several modes and seeds side by side.

A run is an mmengine work directory (``tools/train.py --work-dir``). What the table
reports of it comes from what the run left there:

- the metric of its last validation and the mean wall time per training iteration
  (``time`` of the logged iterations, mmengine's ``IterTimerHook``), from
  ``<timestamp>/vis_data/scalars.json``;
- its trainable and total parameters, the line ``TrainableParamsHook`` logs at the
  start (``<timestamp>/<timestamp>.log``);
- the parameters and active FLOPs of the model as deployed for the task it trained
  (:func:`~mod_squad.analysis.complexity.analyze_complexity` on the config the runner
  dumped into the work directory: the task's parameters, e.g. without the other
  tasks' routers and branches of a multi-task model; one image of the backbone's
  ``img_size``).

Runs are laid out ``<work_dir>/seed<S>/<mode>/`` (``tools/analysis_tools/
run_downstream.sh``).
"""
import glob
import json
import os.path as osp
import re
import statistics
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

from mmengine.config import Config

from . import complexity
from .builder import build_model

TRAINABLE_LINE = re.compile(r'Trainable parameters: ([\d,]+) / ([\d,]+)')


@dataclass
class Run:
    """One training run: its final metric, seconds per training iteration and
    trainable / total parameters."""
    metric: float
    sec_per_iter: float
    trainable: int
    total: int
    config: str


@dataclass
class Cost:
    """The model as deployed for its task: parameters and active FLOPs of one image
    of ``input_shape`` (H, W)."""
    task: Optional[str]
    params: int
    flops: int
    input_shape: tuple


def _latest_log_dir(run_dir: str) -> str:
    """The newest ``<timestamp>`` directory of a work directory with scalars."""
    found = sorted(glob.glob(osp.join(run_dir, '*', 'vis_data', 'scalars.json')))
    if not found:
        raise FileNotFoundError(f'{run_dir} has no */vis_data/scalars.json: not an '
                                'mmengine work directory of a finished run.')
    return osp.dirname(osp.dirname(found[-1]))


def final_metric(entries: Sequence[dict], metric: str, source: str) -> float:
    """``metric`` (``'accuracy/top1'``; ``'<task>/accuracy/top1'`` of a multi-task
    loop matches too) of the last validation entry that has it."""
    for entry in reversed(entries):
        if 'iter' in entry:  # a training entry
            continue
        keys = [k for k in entry if k == metric or k.endswith(f'/{metric}')]
        if len(keys) > 1:
            raise ValueError(f'{source}: several metrics {keys} match {metric!r}; '
                             'name one (e.g. <task>/accuracy/top1).')
        if keys:
            return float(entry[keys[0]])
    raise ValueError(f'{source} has no validation entry with {metric!r}.')


def read_run(run_dir: str, metric: str = 'accuracy/top1') -> Run:
    """Read a finished run (see the module doc)."""
    log_dir = _latest_log_dir(run_dir)
    scalars = osp.join(log_dir, 'vis_data', 'scalars.json')
    with open(scalars) as f:
        entries = [json.loads(line) for line in f if line.strip()]
    times = [entry['time'] for entry in entries if 'iter' in entry]
    if not times:
        raise ValueError(f'{scalars} logs no training iteration.')
    log_file = osp.join(log_dir, f'{osp.basename(log_dir)}.log')
    with open(log_file) as f:
        match = TRAINABLE_LINE.search(f.read())
    if match is None:
        raise ValueError(f'{log_file} has no "Trainable parameters: X / Y" line: add '
                         "custom_hooks=[dict(type='TrainableParamsHook')].")
    configs = glob.glob(osp.join(run_dir, '*.py'))
    if len(configs) != 1:
        raise ValueError(f'{run_dir} should hold the one config the runner dumped, '
                         f'found {configs}.')
    trainable, total = (int(n.replace(',', '')) for n in match.groups())
    return Run(final_metric(entries, metric, scalars), statistics.mean(times),
               trainable, total, configs[0])


def deployed_cost(config: str) -> Cost:
    """Parameters and active FLOPs of the task a config's model trains (its first
    task: the only one of a stock model or of a multi-task model with one branch).
    The weights do not matter: active FLOPs depend on the input's shape only."""
    model = complexity.drop_auxiliary_heads(build_model(Config.fromfile(config)))
    task = complexity.model_tasks(model)[0]
    result = complexity.analyze_dummy_image(model, task,
                                            complexity.default_shape(model))
    return Cost(task, result.params.task, result.flops, tuple(result.input_shape[-2:]))


def collect(work_dir: str, modes: Optional[Sequence[str]] = None,
            metric: str = 'accuracy/top1') -> List[dict]:
    """One row per mode of ``<work_dir>/seed<S>/<mode>/`` runs: the cost of its
    deployed model, trainable / total parameters, seconds per iteration (mean over
    seeds), the metric per seed, its mean and spread (max - min).

    Args:
        work_dir (str): Holds ``seed<S>/<mode>/`` work directories.
        modes (Sequence[str], optional): Rows in this order (default: every mode
            found, sorted).
        metric (str): The metric to report.
    """
    runs: Dict[str, Dict[int, Run]] = {}
    for run_dir in sorted(glob.glob(osp.join(work_dir, 'seed*', '*', ''))):
        seed_dir, mode = osp.split(osp.dirname(run_dir))
        seed = int(osp.basename(seed_dir)[len('seed'):])
        if modes is None or mode in modes:
            runs.setdefault(mode, {})[seed] = read_run(run_dir, metric)
    missing = [mode for mode in modes or () if mode not in runs]
    if missing or not runs:
        raise FileNotFoundError(f'No runs of modes {missing or modes} under '
                                f'{work_dir}/seed*/.')
    rows = []
    for mode in modes or sorted(runs):
        by_seed = dict(sorted(runs[mode].items()))
        first = next(iter(by_seed.values()))
        if any((r.trainable, r.total) != (first.trainable, first.total)
               for r in by_seed.values()):
            raise ValueError(f'The {mode} runs of different seeds train different '
                             'parameters.')
        values = [r.metric for r in by_seed.values()]
        cost = asdict(deployed_cost(first.config))
        rows.append(dict(
            mode=mode,
            config=osp.basename(first.config),
            trainable=first.trainable,
            total=first.total,
            **{f'deployed_{k}': v for k, v in cost.items()},
            sec_per_iter=statistics.mean(r.sec_per_iter for r in by_seed.values()),
            sec_per_iter_by_seed={s: r.sec_per_iter for s, r in by_seed.items()},
            metric=metric,
            by_seed={s: r.metric for s, r in by_seed.items()},
            mean=statistics.mean(values),
            spread=max(values) - min(values)))
    return rows


def table_markdown(rows: Sequence[dict]) -> str:
    """The rows of :func:`collect` as a markdown table."""
    seeds = sorted({s for row in rows for s in row['by_seed']})
    head = ['mode', 'trainable params', 'total params', 'deployed params',
            'active MFLOPs', 's / iter'] + [f'seed {s}' for s in seeds] + [
                'mean', 'spread']
    lines = ['| ' + ' | '.join(head) + ' |',
             '| --- |' + ' --: |' * (len(head) - 1)]
    for row in rows:
        share = 100 * row['trainable'] / row['total']
        cells = [row['mode'], f"{row['trainable']:,} ({share:.1f}%)",
                 f"{row['total']:,}", f"{row['deployed_params']:,}",
                 f"{row['deployed_flops'] / 1e6:.2f}", f"{row['sec_per_iter']:.3f}"]
        cells += [f"{row['by_seed'][s]:.1f}" if s in row['by_seed'] else '-'
                  for s in seeds]
        cells += [f"{row['mean']:.2f}", f"{row['spread']:.1f}"]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)
