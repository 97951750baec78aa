"""Per-task data preprocessing for the multi-task model."""
from typing import Union

from mmengine.model import BaseDataPreprocessor

from mod_squad.registry import MODELS


def task_of_batch(data: dict) -> str:
    """The task of a batch: ``data['task']`` is a task name, or one per sample
    (as collated from :class:`~mod_squad.datasets.HeterogeneousDataset`)."""
    if 'task' not in data:
        raise KeyError('The batch has no "task": train with '
                       'mod_squad.HeterogeneousDataset and evaluate with '
                       'mod_squad.MultiTaskValLoop / MultiTaskTestLoop.')
    task: Union[str, list] = data['task']
    if isinstance(task, str):
        return task
    if len(set(task)) != 1:
        raise ValueError(f'A batch must hold one task, got {sorted(set(task))}: '
                         'use mod_squad.TaskBatchSampler as the batch sampler.')
    return task[0]


@MODELS.register_module()
class MultiTaskDataPreprocessor(BaseDataPreprocessor):
    """Hands each batch to the stock data preprocessor of its task's branch
    (mmpretrain's, mmdet's or mmseg's, as configured in the branch) and passes the
    task on: returns ``dict(inputs=..., data_samples=..., task=task)``.

    It runs in ``train_step`` and also under ``MMDistributedDataParallel``, whose
    ``train_step`` calls ``module.data_preprocessor`` and then ``forward(**data)``.
    """

    def __init__(self):
        super().__init__()
        self.__dict__['branches'] = {}  # not submodules: owned by the model

    def bind(self, branches) -> None:
        """Dispatch to ``branches[task].data_preprocessor``."""
        self.__dict__['branches'] = branches

    def forward(self, data: dict, training: bool = False) -> dict:
        task = task_of_batch(data)
        if task not in self.branches:
            raise KeyError(f'Batch of task {task!r}, but the model has branches '
                           f'{list(self.branches)}.')
        batch = {k: v for k, v in data.items() if k != 'task'}
        batch = self.branches[task].data_preprocessor(batch, training)
        return dict(batch, task=task)
