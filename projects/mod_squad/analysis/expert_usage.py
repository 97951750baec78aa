"""Expert usage of a model on each task's data, offline: collect, save, summarise, plot.

The numbers are the MoE layers' own cumulative statistics (:class:`mod_squad.moe.
ExpertUsage`: top-k picks and router probability mass per task and expert), reset
before the run and read after it; nothing is counted a second way. Mixtures of
attention heads (MoA) are read as MoE MLPs are, their experts being heads.
"""
import json
import math
from dataclasses import dataclass
from itertools import combinations
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.runner import Runner
from mmengine.utils import ProgressBar
from terminaltables import AsciiTable

from mod_squad.datasets import with_checked_dataset
from mod_squad.moe import (ExpertSelection, MoAttention, RoutedLayer,
                           experts_to_cover, reset_expert_usage, usage_entropy,
                           usage_share)

#: Share of the routing mass the summary's "experts to cover" reaches.
COVER_MASS = 0.9


@dataclass
class LayerUsage:
    """Usage of one MoE layer by T tasks (rows in :attr:`UsageReport.tasks` order).

    Attributes:
        name (str): Module name in the model (``'backbone.layers.1.ffn'``).
        kind (str): ``'MoA'`` (experts are attention heads) or ``'MLP'``.
        top_k (dict): Task -> experts per token it was routed with.
        counts (Tensor): (T, E) long, top-k picks of each expert.
        prob_mass (Tensor): (T, E) float64, summed router probabilities.
        tokens (Tensor): (T,) long, tokens routed.
    """
    name: str
    kind: str
    top_k: Dict[str, int]
    counts: torch.Tensor
    prob_mass: torch.Tensor
    tokens: torch.Tensor

    @property
    def num_experts(self) -> int:
        return self.counts.shape[-1]

    def to_dict(self, tasks: Sequence[str]) -> dict:
        """JSON form: raw statistics and shares, each keyed by task."""

        def by_task(stat: torch.Tensor) -> dict:
            return {task: row for task, row in zip(tasks, stat.tolist())}

        return dict(
            name=self.name,
            kind=self.kind,
            num_experts=self.num_experts,
            top_k=dict(self.top_k),
            tokens=by_task(self.tokens),
            counts=by_task(self.counts),
            pick_share=by_task(usage_share(self.counts)),
            prob_mass=by_task(self.prob_mass),
            mass_share=by_task(usage_share(self.prob_mass)))

    @classmethod
    def from_dict(cls, data: dict, tasks: Sequence[str]) -> 'LayerUsage':

        def stack(key: str, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor([data[key][task] for task in tasks], dtype=dtype)

        return cls(data['name'], data['kind'], dict(data['top_k']),
                   stack('counts', torch.long), stack('prob_mass', torch.float64),
                   stack('tokens', torch.long))


@dataclass
class UsageReport:
    """Expert usage of every MoE layer of a model by some tasks.

    Attributes:
        tasks (list[str]): The tasks, rows of every layer's statistics.
        layers (list[LayerUsage]): In model order.
        source (str): What the model ran on, for the reader.
    """
    tasks: List[str]
    layers: List[LayerUsage]
    source: str = ''

    @classmethod
    def from_model(cls, model: nn.Module, tasks: Sequence[str],
                   source: str = '') -> 'UsageReport':
        """Read the cumulative statistics of ``model``'s MoE layers for ``tasks``."""
        layers = []
        for name, layer in model.named_modules():
            if not isinstance(layer, RoutedLayer):
                continue
            unknown = [task for task in tasks if task not in layer.task_names]
            if unknown:
                raise ValueError(f'Layer {name!r} has no router for tasks {unknown}; '
                                 f'its tasks are {list(layer.task_names)}.')
            rows = torch.tensor([layer.router.task_index(task) for task in tasks])
            usage = layer.usage
            layers.append(
                LayerUsage(
                    name=name,
                    kind='MoA' if isinstance(layer, MoAttention) else 'MLP',
                    top_k={task: layer.top_k_of(task) for task in tasks},
                    counts=usage.counts[rows].cpu(),
                    prob_mass=usage.prob_mass[rows].cpu(),
                    tokens=usage.tokens[rows].cpu()))
        if not layers:
            raise ValueError(f'{type(model).__name__} has no MoE layer '
                             '(MoEMLP or MoAttention): no expert usage to report.')
        return cls(list(tasks), layers, source)

    def to_dict(self) -> dict:
        return dict(
            source=self.source,
            tasks=self.tasks,
            layers=[layer.to_dict(self.tasks) for layer in self.layers])

    @classmethod
    def from_dict(cls, data: dict) -> 'UsageReport':
        tasks = list(data['tasks'])
        layers = [LayerUsage.from_dict(layer, tasks) for layer in data['layers']]
        return cls(tasks, layers, data.get('source', ''))

    def save(self, path: str, **extra) -> None:
        """Write :meth:`to_dict` (and ``extra`` keys, e.g. a summary) as JSON."""
        with open(path, 'w') as f:
            json.dump(dict(self.to_dict(), **extra), f, indent=1)

    @classmethod
    def load(cls, path: str) -> 'UsageReport':
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def kept_experts(
            self, selection: Optional[ExpertSelection] = None
    ) -> Dict[str, Dict[str, List[int]]]:
        """Task -> layer name -> expert ids the task keeps under ``selection``
        (default: the authors' threshold), from its share of top-k picks."""
        selection = selection or ExpertSelection()
        kept = {}
        for t, task in enumerate(self.tasks):
            try:
                layers = selection.select_layers({
                    layer.name: (layer.counts[t], layer.top_k[task])
                    for layer in self.layers})
            except ValueError as error:
                raise ValueError(f'Task {task!r}: {error}') from None
            kept[task] = {name: ids.tolist() for name, ids in layers.items()}
        return kept


def jaccard(a: Iterable[int], b: Iterable[int]) -> float:
    """|A & B| / |A | B| of two sets of expert ids (1 for two empty sets)."""
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 1.


def summarize(report: UsageReport,
              selection: Optional[ExpertSelection] = None,
              mass: float = COVER_MASS) -> dict:
    """Per task and layer: the experts covering ``mass`` of the routing mass, the
    entropy (nats) of the share of top-k picks, and the experts kept under
    ``selection`` (default: the authors' threshold); per pair of tasks and layer,
    the Jaccard overlap of their kept sets. Each also as a mean over layers.

    Returns:
        dict: ``selection`` (str), ``tasks`` (task -> ``layers`` (name ->
        ``cover``, ``entropy``, ``kept``) and the means ``cover``, ``entropy``,
        ``num_kept``), ``overlap`` (``'a-b'`` -> ``layers`` (name -> Jaccard) and
        ``mean``).
    """
    selection = selection or ExpertSelection()
    kept = report.kept_experts(selection)
    tasks = {}
    for t, task in enumerate(report.tasks):
        layers = {
            layer.name: dict(
                cover=int(experts_to_cover(layer.prob_mass[t], mass)),
                entropy=float(usage_entropy(layer.counts[t])),
                kept=kept[task][layer.name]) for layer in report.layers
        }
        tasks[task] = dict(
            layers=layers,
            cover=_mean(v['cover'] for v in layers.values()),
            entropy=_mean(v['entropy'] for v in layers.values()),
            num_kept=_mean(len(v['kept']) for v in layers.values()))
    overlap = {}
    for a, b in combinations(report.tasks, 2):
        layers = {name: jaccard(kept[a][name], kept[b][name]) for name in kept[a]}
        overlap[f'{a}-{b}'] = dict(layers=layers, mean=_mean(layers.values()))
    return dict(selection=str(selection), cover_mass=mass, tasks=tasks, overlap=overlap)


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)


def format_summary(report: UsageReport, summary: dict) -> str:
    """:func:`summarize`'s numbers as one table per task and one of overlaps."""
    mass = f'{100 * summary["cover_mass"]:g}%'
    out = [f'Expert usage ({report.source}); kept: {summary["selection"]}']
    for task, stats in summary['tasks'].items():
        rows = [['layer', 'kind', 'E', 'k', f'experts to {mass} mass', 'entropy',
                 'kept']]
        for layer in report.layers:
            v = stats['layers'][layer.name]
            rows.append([layer.name, layer.kind, layer.num_experts, layer.top_k[task],
                         v['cover'], f'{v["entropy"]:.3f}',
                         f'{len(v["kept"])} {v["kept"]}'])
        rows.append(['mean', '', '', '', f'{stats["cover"]:.2f}',
                     f'{stats["entropy"]:.3f}', f'{stats["num_kept"]:.2f}'])
        out.append(AsciiTable(rows, f' {task} ').table)
    if summary['overlap']:
        pairs = list(summary['overlap'])
        rows = [['layer'] + pairs]
        for layer in report.layers:
            rows.append([layer.name] + [
                f'{summary["overlap"][p]["layers"][layer.name]:.2f}' for p in pairs])
        rows.append(['mean'] + [f'{summary["overlap"][p]["mean"]:.2f}' for p in pairs])
        out.append('Overlap of the kept experts (Jaccard):\n' + AsciiTable(rows).table)
    return '\n'.join(out)


def plot_usage(report: UsageReport,
               path: str,
               statistic: str = 'counts',
               kept: Optional[Dict[str, Dict[str, List[int]]]] = None,
               max_panels: int = 12):
    """Heatmaps of the share (%) of each expert, outlining ``kept`` experts.

    Up to ``max_panels`` layers: one panel per layer, tasks x experts. More layers:
    a compact grid, one panel per task, layers x experts (a layer with fewer experts
    than the widest is blank beyond its own).

    Args:
        report (UsageReport): The usage.
        path (str): Image file to write (``.png``, ``.pdf``, ...).
        statistic (str): ``'counts'`` (share of top-k picks) or ``'prob_mass'``
            (share of routing mass).
        kept (dict, optional): :meth:`UsageReport.kept_experts`.
        max_panels (int): Most layers drawn as panels of their own.

    Returns:
        matplotlib.figure.Figure: The figure.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    if statistic not in ('counts', 'prob_mass'):
        raise ValueError(f"statistic must be 'counts' or 'prob_mass', got {statistic!r}.")
    label = 'top-k picks' if statistic == 'counts' else 'routing mass'
    shares = [100 * usage_share(getattr(layer, statistic)) for layer in report.layers]
    num_experts = max(layer.num_experts for layer in report.layers)
    compact = len(report.layers) > max_panels
    if compact:  # panel per task: (L, E_max), NaN where a layer has no expert
        panels = [(task, torch.stack([
            torch.cat([s[t], s.new_full((num_experts - s.shape[1], ), math.nan)])
            for s in shares]), [layer.name for layer in report.layers])
                  for t, task in enumerate(report.tasks)]
    else:  # panel per layer: (T, E)
        panels = [(f'{layer.name} ({layer.kind})', s, report.tasks)
                  for layer, s in zip(report.layers, shares)]
    cols = min(len(panels), 3)
    rows = math.ceil(len(panels) / cols)
    cell = 0.38  # inches per heatmap cell; labels and titles around it
    label_width = 2.2 if compact else 0.8
    width = cols * (max(num_experts, 4) * cell + label_width) + 1.2
    height = rows * (len(panels[0][2]) * cell + 1.0) + 0.9
    fig = Figure(figsize=(width, height), layout='constrained')
    axes = fig.subplots(rows, cols, squeeze=False)
    vmax = max(float(s.max()) for s in shares) or 1.
    for ax, (title, data, row_labels) in zip(axes.flat, panels):
        image = ax.imshow(data.numpy(), cmap='viridis', vmin=0, vmax=vmax,
                          aspect='auto', interpolation='nearest')
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(data.shape[1]))
        ax.set_xticklabels(range(data.shape[1]), fontsize=7)
        ax.set_yticks(range(len(row_labels)))
        ax.set_yticklabels(row_labels, fontsize=7)
        ax.set_xlabel('expert', fontsize=8)
        if data.shape[1] <= 16 and not compact:  # the percentages, if they fit
            for r, row in enumerate(data.tolist()):
                for c, value in enumerate(row):
                    if value < 0.5:
                        continue
                    ax.text(c, r, f'{value:.0f}', ha='center', va='center', fontsize=6,
                            color='white' if value < 0.6 * vmax else 'black')
        for r, c in _kept_cells(report, kept, title, compact):
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False,
                                   edgecolor='red', linewidth=1.2))
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.colorbar(image, ax=axes, shrink=0.8, label=f'share of {label} (%)')
    kept_note = ', red: kept experts' if kept else ''
    fig.suptitle(f'Expert usage: share of {label} per task{kept_note}\n{report.source}',
                 fontsize=10)
    fig.savefig(path, dpi=120)
    return fig


def _kept_cells(report: UsageReport, kept, title: str, compact: bool):
    """(row, column) of the kept experts in the panel called ``title``."""
    if not kept:
        return []
    if compact:  # title is the task; rows are layers
        return [(r, e) for r, layer in enumerate(report.layers)
                for e in kept[title][layer.name]]
    name = title.rsplit(' (', 1)[0]  # title is 'name (kind)'; rows are tasks
    return [(r, e) for r, task in enumerate(report.tasks) for e in kept[task][name]]


@torch.no_grad()
def collect_usage(model: nn.Module,
                  dataloaders: Mapping[str, Iterable],
                  max_batches: Optional[int] = None,
                  source: str = '') -> UsageReport:
    """Run each task's batches through ``model.test_step`` (evaluation mode, no
    grad, no evaluation) and read the usage, reset before the run.

    Args:
        model (BaseModel): A multi-task model (``data_batch['task']`` is set).
        dataloaders (Mapping[str, Iterable]): Task -> its batches.
        max_batches (int, optional): Batches per task (default: all).
        source (str): What the batches are, for the report.
    """
    model.eval()
    reset_expert_usage(model)
    for task, dataloader in dataloaders.items():
        total = len(dataloader) if max_batches is None else min(
            max_batches, len(dataloader))
        print_log(f'Expert usage of task {task}: {total} batches', logger='current')
        progress = ProgressBar(total)
        for i, data_batch in enumerate(dataloader):
            if i == total:
                break
            data_batch['task'] = task
            model.test_step(data_batch)
            progress.update()
    return UsageReport.from_model(model, list(dataloaders), source)


def build_task_dataloaders(cfg: Config,
                           split: str = 'val',
                           tasks: Optional[Sequence[str]] = None) -> Dict[str, Iterable]:
    """Task -> dataloader of ``cfg``'s ``{split}_dataloader`` (a dataloader config
    per task, as :class:`~mod_squad.engine.MultiTaskEvalLoop` takes), for ``tasks``
    (default: all, in the config's order)."""
    loaders = cfg.get(f'{split}_dataloader')
    if not isinstance(loaders, dict) or 'dataset' in loaders:
        raise ValueError(f'{split}_dataloader must map each task to its dataloader '
                         f'config (a multi-task config), got {loaders!r:.200}.')
    tasks = list(loaders) if tasks is None else list(tasks)
    unknown = [task for task in tasks if task not in loaders]
    if unknown:
        raise ValueError(f'Tasks {unknown} have no {split}_dataloader; the config has '
                         f'{list(loaders)}.')
    seed = cfg.get('randomness', {}).get('seed')
    return {
        task: Runner.build_dataloader(
            with_checked_dataset(task, loaders[task]), seed=seed)
        for task in tasks
    }
