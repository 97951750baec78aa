"""Accuracy vs compute of a multi-task checkpoint: each task at several compute
settings (experts per token, kept experts), without retraining.

A setting (:class:`ComputeSetting`) is applied with ``ModSquadViT.set_compute``: a
lower k routes each token to fewer experts (the experts compute less), a kept set
disables the other experts (the parameters the task needs; the masked layer equals
the extracted one to float summation order, see :mod:`.extraction`). For each
setting the task's val (or test) dataloader runs through ``test_step`` and the
task's stock evaluator; active FLOPs come from :func:`analyze_complexity` on the
first image of the split after the task's preprocessor, and the wall time is the
median over batches of ``test_step`` time per image.
"""
import json
import math
import numbers
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Union

import torch
from mmengine.evaluator import Evaluator
from mmengine.utils import ProgressBar

from mod_squad.models import ModSquadMultiTaskModel
from .complexity import analyze_complexity
from .extraction import task_routed_layers

#: The metric each toolbox's evaluator is read by, first found (else its first).
PRIMARY_METRICS = ('accuracy/top1', 'coco/bbox_mAP', 'coco/segm_mAP', 'mIoU')


@dataclass
class ComputeSetting:
    """How much of the backbone a task runs.

    Attributes:
        name (str): Label in tables and plots.
        top_k (int | dict, optional): Experts per token of every mixture, or
            ``dict(mlp=..., attn=...)`` (None: the built k).
        kept (dict, optional): Routed layer name -> enabled expert ids (None: all).
    """
    name: str
    top_k: Union[None, int, dict] = None
    kept: Optional[Dict[str, List[int]]] = None

    def apply(self, model: ModSquadMultiTaskModel, task: str) -> None:
        """``model.backbone.set_compute`` of ``task`` (replaces its settings)."""
        enabled = {}
        for name, ids in (self.kept or {}).items():
            _, _, block, part = name.split('.')  # 'backbone.layers.<i>.<part>'
            enabled.setdefault(int(block), {})['attn' if part == 'attn' else 'mlp'] = ids
        model.backbone.set_compute(task, self.top_k, enabled)


@dataclass
class SettingResult:
    """One task at one setting: what ran, its cost and its metrics."""
    task: str
    setting: str
    top_k: Dict[str, int]
    num_experts: Dict[str, int]
    params: int
    active_params: int
    gflops: float
    ms_per_image: float
    metric: str
    value: float
    metrics: Dict[str, float] = field(default_factory=dict)

    @property
    def mean_k(self) -> float:
        return sum(self.top_k.values()) / len(self.top_k)

    @property
    def mean_experts(self) -> float:
        return sum(self.num_experts.values()) / len(self.num_experts)


def primary_metric(metrics: Dict[str, float]) -> str:
    """The key of :data:`PRIMARY_METRICS` found in ``metrics``, else the first."""
    return next((key for key in PRIMARY_METRICS if key in metrics), next(iter(metrics)))


@torch.no_grad()
def evaluate_setting(model: ModSquadMultiTaskModel, task: str, setting: ComputeSetting,
                     dataloader: Iterable, evaluator: dict,
                     max_batches: Optional[int] = None) -> SettingResult:
    """Apply ``setting`` to ``task`` and evaluate it (see the module doc); the
    task's compute settings are reset to the built ones afterwards.

    Args:
        model (ModSquadMultiTaskModel): The model, in eval mode.
        task (str): The task.
        setting (ComputeSetting): The setting.
        dataloader (Iterable): The task's batches (a built dataloader).
        evaluator (dict): The task's evaluator config (its ``_scope_`` set).
        max_batches (int, optional): Batches to run (default: all).
    """
    layers = task_routed_layers(model, task)
    before = {name: (layer.top_k_of(task), layer.enabled_experts_of(task))
              for name, layer in layers.items()}
    setting.apply(model, task)
    try:
        metric_evaluator = Evaluator(evaluator)
        metric_evaluator.dataset_meta = getattr(dataloader.dataset, 'metainfo', None)
        total = len(dataloader) if max_batches is None else min(max_batches,
                                                                len(dataloader))
        times, num_samples, complexity = [], 0, None
        progress = ProgressBar(total)
        for i, batch in enumerate(dataloader):
            if i == total:
                break
            batch['task'] = task
            if complexity is None:
                data = model.branches[task].data_preprocessor(
                    dict(inputs=batch['inputs'][:1],
                         data_samples=batch['data_samples'][:1]), False)
                complexity = analyze_complexity(model, data['inputs'], task,
                                                data['data_samples'])
            start = time.perf_counter()
            outputs = model.test_step(batch)
            times.append((time.perf_counter() - start) / len(outputs))
            metric_evaluator.process(outputs, batch)
            num_samples += len(outputs)
            progress.update()
        metrics = metric_evaluator.evaluate(num_samples)
        key = primary_metric(metrics) if metrics else ''
        return SettingResult(
            task=task,
            setting=setting.name,
            top_k={name: layer.top_k_of(task) for name, layer in layers.items()},
            num_experts={name: len(layer.enabled_experts_of(task))
                         for name, layer in layers.items()},
            params=complexity.params.task,
            active_params=complexity.params.active,
            gflops=complexity.flops / 1e9,
            ms_per_image=1e3 * float(torch.tensor(times).median()),
            metric=key,
            value=float(metrics[key]) if metrics else math.nan,
            metrics={k: float(v) for k, v in metrics.items()
                     if isinstance(v, numbers.Real)})
    finally:
        for name, (k, ids) in before.items():
            layers[name].router.set_compute(task, k, ids)


def results_table(results: Sequence[SettingResult]) -> str:
    """A markdown table: task, setting, mean k and experts per layer, parameters
    (task, active per token), active GFLOPs, ms per image, metric."""
    lines = ['| task | setting | k (mean) | experts (mean) | params (task) | '
             'params (active) | GFLOPs (active) | ms / image | metric |',
             '|:--|:--|--:|--:|--:|--:|--:|--:|:--|']
    for r in results:
        lines.append(f'| {r.task} | {r.setting} | {r.mean_k:.2f} | {r.mean_experts:.2f} '
                     f'| {r.params / 1e6:.3f} M | {r.active_params / 1e6:.3f} M '
                     f'| {r.gflops:.4f} | {r.ms_per_image:.2f} | {r.metric} '
                     f'{r.value:.4g} |')
    return '\n'.join(lines)


def save_results(results: Sequence[SettingResult], path: str) -> None:
    with open(path, 'w') as f:
        json.dump([asdict(r) for r in results], f, indent=1)


def plot_accuracy_vs_compute(results: Sequence[SettingResult], path: str):
    """Metric vs active GFLOPs, one panel per task, each setting a labelled point:
    circles run every expert, squares a kept set (the same FLOPs, fewer
    parameters: in the label).

    Returns:
        matplotlib.figure.Figure: The figure.
    """
    from matplotlib.figure import Figure

    tasks = list(dict.fromkeys(r.task for r in results))
    fig = Figure(figsize=(4.2 * len(tasks), 3.6), layout='constrained')
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for ax, task in zip(axes, tasks):
        rows = [r for r in results if r.task == task]
        for i, r in enumerate(rows):
            pruned = r.mean_experts < max(x.mean_experts for x in rows)
            ax.plot(r.gflops, r.value, 's' if pruned else 'o',
                    color='C1' if pruned else 'C0')
            label = f'{r.setting}, {r.params / 1e6:.2f}M' if pruned else r.setting
            ax.annotate(label, (r.gflops, r.value), textcoords='offset points',
                        xytext=(4, 4 - 10 * (i % 2)), fontsize=7)
        ax.set_title(task, fontsize=10)
        ax.set_xlabel('active GFLOPs per image', fontsize=9)
        ax.set_ylabel(rows[0].metric, fontsize=9)
        ax.margins(0.25)
    fig.suptitle('Accuracy vs compute (no retraining)', fontsize=10)
    fig.savefig(path, dpi=120)
    return fig
