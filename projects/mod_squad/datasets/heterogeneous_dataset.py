"""One stock dataset per task in one index space, each sample tagged with its task."""
import bisect
import itertools
import os.path as osp
from typing import Dict, Tuple, Union

from mmengine.dataset import BaseDataset, force_full_init
from torch.utils.data import Dataset

from mod_squad.registry import DATASETS


def _local_paths(cfg: dict) -> Dict[str, str]:
    """The local paths a stock dataset config reads, by config key, joined to
    ``data_root`` as ``BaseDataset`` joins them; remote (``://``) paths are left out."""
    root = cfg.get('data_root') or ''
    paths = {'data_root': root} if root else {}
    if isinstance(cfg.get('ann_file'), str) and cfg['ann_file']:
        paths['ann_file'] = osp.join(root, cfg['ann_file'])
    prefix = cfg.get('data_prefix')  # a dict, or a str in mmpretrain
    prefixes = prefix.items() if isinstance(prefix, dict) else [(None, prefix)]
    for key, value in prefixes:
        if isinstance(value, str):
            paths['data_prefix' + (f'.{key}' if key else '')] = osp.join(root, value)
    return {key: path for key, path in paths.items() if path and '://' not in path}


def build_task_dataset(task: str, cfg: dict) -> BaseDataset:
    """Build a stock dataset config after checking that its paths exist.

    The dataset and its pipeline are built in the config's ``_scope_``, or in the scope
    of a prefixed ``type`` (``'mmseg.ADE20KDataset'``): a prefix alone would resolve the
    pipeline's transforms in the default scope, where several names
    (``LoadAnnotations``, ``Resize``, ...) are other toolboxes' classes.

    Raises:
        FileNotFoundError: A ``data_root``/``ann_file``/``data_prefix`` path does not
            exist; the message names the task and the path.
    """
    for key, path in _local_paths(cfg).items():
        if not osp.exists(osp.expanduser(path)):
            raise FileNotFoundError(
                f"HeterogeneousDataset: task '{task}': {key} '{path}' does not exist")
    cfg = dict(cfg)
    if '_scope_' not in cfg and isinstance(cfg.get('type'), str) and '.' in cfg['type']:
        cfg['_scope_'], cfg['type'] = cfg['type'].split('.', 1)
    return DATASETS.build(cfg)


@DATASETS.register_module()
class HeterogeneousDataset(Dataset):
    """Stock single-task datasets concatenated into one index space, one per task.

    Global indices ``task_ranges[task]`` address ``datasets[task]`` in task order, as in
    :class:`mmengine.dataset.ConcatDataset`, but every dataset keeps its own pipeline,
    metainfo and sample type. ``__getitem__`` returns the stock packed sample
    (``inputs``, ``data_samples``) plus ``'task'``; batches of one task collate with
    ``pseudo_collate`` into ``task=[task] * batch_size``. Pair it with
    :class:`~mod_squad.datasets.TaskBatchSampler` so that every batch holds one task.

    Args:
        datasets (dict[str, dict | BaseDataset]): Task name -> stock dataset or its
            config, e.g. ``dict(_scope_='mmdet', type='CocoDataset', ...)``. The order
            of the keys is the task order.
        lazy_init (bool): Defer loading the annotations to :meth:`full_init`.
            Defaults to False.
    """

    def __init__(self,
                 datasets: Dict[str, Union[dict, BaseDataset]],
                 lazy_init: bool = False):
        if not isinstance(datasets, dict) or not datasets:
            raise ValueError('HeterogeneousDataset: `datasets` must be a non-empty '
                             f'dict of task name -> dataset, got {datasets!r}')
        self.datasets: Dict[str, BaseDataset] = {}
        for task, dataset in datasets.items():
            if isinstance(dataset, dict):
                dataset = build_task_dataset(task, dataset)
            elif not isinstance(dataset, BaseDataset):
                raise TypeError(f"HeterogeneousDataset: task '{task}' must be a "
                                f'dataset config or a BaseDataset, got {type(dataset)}')
            self.datasets[task] = dataset
        self._fully_initialized = False
        if not lazy_init:
            self.full_init()

    @property
    def task_names(self) -> Tuple[str, ...]:
        """Task names in task order."""
        return tuple(self.datasets)

    @property
    def metainfo(self) -> dict:
        """Task -> a copy of that dataset's metainfo."""
        return {task: dataset.metainfo for task, dataset in self.datasets.items()}

    def full_init(self) -> None:
        """Load every dataset's annotations and lay out the global index ranges."""
        if self._fully_initialized:
            return
        for dataset in self.datasets.values():
            dataset.full_init()
        #: End of each task's range, e.g. sizes (2, 3, 4) -> [2, 5, 9].
        self.cumulative_sizes = list(
            itertools.accumulate(len(dataset) for dataset in self.datasets.values()))
        self._fully_initialized = True

    @property
    @force_full_init
    def task_ranges(self) -> Dict[str, range]:
        """Task -> its range of global indices."""
        starts = [0] + self.cumulative_sizes[:-1]
        return {
            task: range(start, end)
            for task, start, end in zip(self.task_names, starts, self.cumulative_sizes)
        }

    @force_full_init
    def __len__(self) -> int:
        return self.cumulative_sizes[-1]

    @force_full_init
    def locate(self, index: int) -> Tuple[str, int]:
        """Global index -> (task, index in that task's dataset)."""
        if not 0 <= index < len(self):
            raise IndexError(f'index {index} out of range for {len(self)} samples')
        position = bisect.bisect_right(self.cumulative_sizes, index)
        start = self.cumulative_sizes[position - 1] if position else 0
        return self.task_names[position], index - start

    def task_of(self, index: int) -> str:
        """The task of a global index."""
        return self.locate(index)[0]

    def get_data_info(self, index: int) -> dict:
        """The annotation of a global index, from its task's dataset."""
        task, local = self.locate(index)
        return self.datasets[task].get_data_info(local)

    def __getitem__(self, index: int) -> dict:
        task, local = self.locate(index)
        sample = self.datasets[task][local]
        sample['task'] = task
        return sample
