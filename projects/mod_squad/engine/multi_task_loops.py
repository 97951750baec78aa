"""Validation and test loops that run every task's stock evaluator on its own
dataloader, one task after another, and report all metrics prefixed by task."""
import logging
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.runner import BaseLoop, autocast
from terminaltables import AsciiTable

from mod_squad.datasets import with_checked_dataset
from mod_squad.registry import LOOPS


class MultiTaskEvalLoop(BaseLoop):
    """Evaluate each task on its dataloader with its evaluator.

    ``dataloader`` and ``evaluator`` map a task name to what mmengine's
    ``ValLoop`` takes (a config or a built object); put ``_scope_`` on each
    task's dataset and metric configs so they build in their toolbox. Every
    batch gets ``data_batch['task'] = task`` before the model's step. The
    hooks are called as mmengine's loops call them, once per run, and
    ``after_{stage}_epoch`` receives the metrics of all tasks with keys
    ``f'{task}/{key}'`` (``det/coco/bbox_mAP``), so ``LoggerHook`` logs them
    and ``CheckpointHook(save_best=...)`` selects by any of them. While a task
    runs, :attr:`dataloader` and :attr:`evaluator` are that task's (progress
    lines read ``len(runner.val_dataloader)``).

    Args:
        runner (Runner): The runner.
        dataloader (dict): Task name to dataloader or dataloader config.
        evaluator (dict): Task name to evaluator or evaluator config.
        tasks (Sequence[str], optional): Evaluate only these tasks, in this
            order. Defaults to all tasks, in ``dataloader``'s order.
        fp16 (bool): Whether to run the model under autocast. Defaults to
            False.
    """
    stage: str  # 'val' or 'test': names the hooks and the model's step

    def __init__(self,
                 runner,
                 dataloader: dict,
                 evaluator: dict,
                 tasks: Optional[Sequence[str]] = None,
                 fp16: bool = False) -> None:
        # Not BaseLoop.__init__: it builds a single dataloader.
        self._runner = runner
        self.tasks = _check_tasks(dataloader, evaluator, tasks)
        # From the config: the runner keeps its ``randomness`` private. A runner
        # built without ``cfg`` gets mmengine's default, one seed on all ranks.
        diff_rank_seed = runner.cfg.get('randomness', {}).get('diff_rank_seed', False)
        self.dataloaders = {
            task: runner.build_dataloader(
                with_checked_dataset(task, dataloader[task]), seed=runner.seed,
                diff_rank_seed=diff_rank_seed)
            for task in self.tasks
        }
        self.evaluators = {
            task: runner.build_evaluator(evaluator[task])
            for task in self.tasks
        }
        for task in self.tasks:
            dataset = self.dataloaders[task].dataset
            if not hasattr(dataset, 'metainfo'):
                print_log(
                    f'{task}: dataset {type(dataset).__name__} has no '
                    'metainfo; its evaluator and the visualizer get no '
                    'dataset_meta.',
                    logger='current',
                    level=logging.WARNING)
            self.evaluators[task].dataset_meta = getattr(
                dataset, 'metainfo', None)
        self.task = self.tasks[0]
        self.fp16 = fp16

    @property
    def dataloader(self):
        """The dataloader of the task being evaluated."""
        return self.dataloaders[self.task]

    @property
    def evaluator(self):
        """The evaluator of the task being evaluated."""
        return self.evaluators[self.task]

    def run(self) -> Dict[str, float]:
        """Evaluate all tasks; returns their metrics, prefixed by task."""
        self.runner.call_hook(f'before_{self.stage}')
        self.runner.call_hook(f'before_{self.stage}_epoch')
        self.runner.model.eval()
        metrics = {}
        for task in self.tasks:
            metrics.update(self.run_task(task))
        self.runner.call_hook(f'after_{self.stage}_epoch', metrics=metrics)
        self.runner.call_hook(f'after_{self.stage}')
        return metrics

    def run_task(self, task: str) -> Dict[str, float]:
        """Evaluate one task; returns its metrics, prefixed by ``task``."""
        self.task = task
        self.runner.visualizer.dataset_meta = self.evaluator.dataset_meta
        num_samples = len(self.dataloader.dataset)
        print_log(
            f'Evaluating task {task} ({self.stage}): {num_samples} samples, '
            f'{len(self.dataloader)} batches',
            logger='current')
        for idx, data_batch in enumerate(self.dataloader):
            self.run_iter(idx, data_batch)
        metrics = self.evaluator.evaluate(num_samples)
        if not metrics:
            print_log(
                f'Task {task}: its evaluator returned no metrics (mmdet\'s CocoMetric '
                'returns none when nothing was predicted above the score threshold).',
                logger='current', level=logging.WARNING)
        return {f'{task}/{key}': value for key, value in metrics.items()}

    @torch.no_grad()
    def run_iter(self, idx: int, data_batch: dict) -> None:
        """Run the model's step on one batch of the current task."""
        data_batch['task'] = self.task
        self.runner.call_hook(
            f'before_{self.stage}_iter', batch_idx=idx, data_batch=data_batch)
        step = getattr(self.runner.model, f'{self.stage}_step')
        with autocast(enabled=self.fp16):
            outputs = step(data_batch)
        self.evaluator.process(data_samples=outputs, data_batch=data_batch)
        self.runner.call_hook(
            f'after_{self.stage}_iter',
            batch_idx=idx,
            data_batch=data_batch,
            outputs=outputs)


@LOOPS.register_module()
class MultiTaskValLoop(MultiTaskEvalLoop):
    """Validation over all tasks (see :class:`MultiTaskEvalLoop`)::

        val_cfg = dict(type='mod_squad.MultiTaskValLoop')
    """
    stage = 'val'


@LOOPS.register_module()
class MultiTaskTestLoop(MultiTaskEvalLoop):
    """Test over all tasks (see :class:`MultiTaskEvalLoop`); logs a table of
    all metrics at the end::

        test_cfg = dict(type='mod_squad.MultiTaskTestLoop')
    """
    stage = 'test'

    def run(self) -> Dict[str, float]:
        """Test all tasks, then log their metrics as one table."""
        metrics = super().run()
        print_log('\n' + metrics_table(metrics, self.tasks), logger='current')
        return metrics


def metrics_table(metrics: Dict[str, float], tasks: Sequence[str] = ()) -> str:
    """ASCII table of prefixed metrics, one ``task | metric | value`` row
    each, and a ``no metrics`` row for each of ``tasks`` without any."""
    rows = [['task', 'metric', 'value']]
    for key, value in metrics.items():
        task, name = key.split('/', 1)
        rows.append(
            [task, name,
             f'{value:.4f}' if isinstance(value, (float, np.floating))
             else str(value)])
    rows += [[task, '(no metrics)', '-'] for task in tasks
             if not any(key.startswith(f'{task}/') for key in metrics)]
    return AsciiTable(rows).table


def restrict_tasks(cfg: Config, tasks: Sequence[str],
                   stage: str = 'test') -> None:
    """Make the multi-task loop of ``cfg`` (``{stage}_cfg``) evaluate only
    ``tasks``; raises ValueError if that loop is not a multi-task loop."""
    loop_cfg = cfg.get(f'{stage}_cfg') or {}
    # Resolve the type as the runner will: in the config's default scope.
    with LOOPS.switch_scope_and_registry(cfg.get('default_scope',
                                                 'mmengine')) as loops:
        loop = loops.get(loop_cfg.get('type', f'{stage.capitalize()}Loop'))
    if not (isinstance(loop, type) and issubclass(loop, MultiTaskEvalLoop)):
        raise ValueError(
            f'only a multi-task loop evaluates chosen tasks {list(tasks)}, '
            f'but {stage}_cfg={loop_cfg}; use '
            f"dict(type='mod_squad.MultiTask{stage.capitalize()}Loop')")
    cfg[f'{stage}_cfg'] = dict(loop_cfg, tasks=list(tasks))


def _check_tasks(dataloader: dict, evaluator: dict,
                 tasks: Optional[Sequence[str]]) -> list:
    """The tasks to evaluate: ``tasks``, or all tasks of ``dataloader``."""
    no_evaluator = [task for task in dataloader if task not in evaluator]
    no_dataloader = [task for task in evaluator if task not in dataloader]
    if no_evaluator or no_dataloader:
        raise ValueError(
            'every task needs a dataloader and an evaluator, but tasks '
            f'{no_evaluator} have no evaluator and tasks {no_dataloader} '
            'have no dataloader')
    if tasks is None:
        tasks = list(dataloader)
    unknown = [task for task in tasks if task not in dataloader]
    if unknown or not tasks:
        raise ValueError(f'unknown tasks {unknown} in tasks={list(tasks)}; '
                         f'the tasks are {list(dataloader)}')
    return list(tasks)
