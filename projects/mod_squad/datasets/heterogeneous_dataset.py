"""One stock dataset per task in one index space, each sample tagged with its task."""
import logging
import os.path as osp
from typing import Dict, Tuple, Union

from mmengine.dataset import BaseDataset, ConcatDataset, force_full_init
from mmengine.logging import print_log

from mod_squad.registry import DATASETS
from .seeded_index import SeededIndex, seeded_random_state


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

    It is built with ``lazy_init=True``, so that :func:`load_task_dataset` loads it
    and names the task in its errors.

    Raises:
        FileNotFoundError: A ``data_root``/``ann_file``/``data_prefix`` path does not
            exist; the message names the task and the path.
        ValueError: The ``ann_file`` is empty (0 bytes).
    """
    for key, path in _local_paths(cfg).items():
        local = osp.expanduser(path)
        if not osp.exists(local):
            raise FileNotFoundError(
                f"HeterogeneousDataset: task '{task}': {key} '{path}' does not exist")
        if key == 'ann_file' and osp.getsize(local) == 0:
            raise ValueError(f"HeterogeneousDataset: task '{task}': ann_file '{path}' "
                             'is empty (0 bytes)')
    cfg = dict(cfg, lazy_init=True)
    if '_scope_' not in cfg and isinstance(cfg.get('type'), str) and '.' in cfg['type']:
        cfg['_scope_'], cfg['type'] = cfg['type'].split('.', 1)
    return DATASETS.build(cfg)


def _source(dataset) -> str:
    """Where a stock dataset reads its samples from, for messages."""
    if getattr(dataset, 'ann_file', ''):
        return f"ann_file '{dataset.ann_file}'"
    return f'data_prefix {getattr(dataset, "data_prefix", None)}'


def load_task_dataset(task: str, dataset: BaseDataset) -> None:
    """``dataset.full_init()``, then check what it loaded.

    Warns if a COCO-style dataset (mmdet ``CocoDataset`` and its subclasses) dropped
    annotations whose category is not one of its classes.

    Raises:
        ValueError: The dataset has no samples (mmengine would fail with ``need at
            least one array to concatenate``); the message names the task and the file.
    """
    try:
        dataset.full_init()
    except ValueError as error:
        # mmengine serialises the samples with np.concatenate, which fails on none.
        if getattr(dataset, 'data_list', None) != [] or \
                'at least one array' not in str(error):
            raise
        num_samples = 0
    else:
        num_samples = len(dataset)
    if not num_samples:
        filter_cfg = getattr(dataset, 'filter_cfg', None)
        raise ValueError(
            f"HeterogeneousDataset: task '{task}': {type(dataset).__name__} found no "
            f'samples in {_source(dataset)}'
            + (f' (after filter_cfg={filter_cfg})' if filter_cfg else '')
            + '; fix the annotations, or leave the task out of the dataset')
    _warn_unknown_categories(task, dataset)


def with_checked_dataset(task: str, dataloader):
    """A dataloader config whose dataset config is built and checked as the train
    datasets are (:func:`load_task_dataset`: a missing path or an empty dataset
    names the task and the file); other dataloaders are returned as they are."""
    if not isinstance(dataloader, dict) or not isinstance(dataloader.get('dataset'), dict):
        return dataloader
    dataset = build_task_dataset(task, dataloader['dataset'])
    load_task_dataset(task, dataset)
    return dict(dataloader, dataset=dataset)


def _warn_unknown_categories(task: str, dataset: BaseDataset) -> None:
    """Warn about the annotations a COCO-style dataset dropped for their category.

    mmdet's ``CocoDataset`` keeps the annotations of ``cat_ids`` (its classes' ids)
    only; ``cat_img_map`` (category id -> one image id per annotation) still counts
    all of them after loading.
    """
    cat_ids = getattr(dataset, 'cat_ids', None)
    cat_img_map = getattr(dataset, 'cat_img_map', None)
    if cat_ids is None or cat_img_map is None:
        return
    unknown = sorted(set(cat_img_map) - set(cat_ids))
    if unknown:
        num_dropped = sum(len(cat_img_map[cat_id]) for cat_id in unknown)
        print_log(
            f"HeterogeneousDataset: task '{task}': {type(dataset).__name__} drops "
            f'{num_dropped} annotations in {_source(dataset)} whose category ids '
            f'{unknown} are not among the ids of its {len(cat_ids)} classes; add '
            "those categories' names to `metainfo.classes` to train on them",
            logger='current',
            level=logging.WARNING)


@DATASETS.register_module()
class HeterogeneousDataset(ConcatDataset):
    """Stock single-task datasets concatenated into one index space, one per task.

    As :class:`mmengine.dataset.ConcatDataset` (global indices address the
    ``datasets`` in task order, ``cumulative_sizes``, ``get_data_info``), but every
    dataset keeps its own pipeline, metainfo and sample type. ``__getitem__`` returns
    the stock packed sample (``inputs``, ``data_samples``) plus ``'task'``; batches of
    one task collate with ``pseudo_collate`` into ``task=[task] * batch_size``. Pair
    it with :class:`~mod_squad.datasets.TaskBatchSampler` so that every batch holds
    one task; that sampler's indices are
    :class:`~mod_squad.datasets.SeededIndex` pairs, whose pipelines run from their
    own seed (see :meth:`__getitem__`).

    Loading checks each task (:func:`load_task_dataset`): an empty dataset is an
    error, annotations of unknown categories are warned about.

    Args:
        datasets (dict[str, dict | BaseDataset]): Task name -> stock dataset or its
            config, e.g. ``dict(_scope_='mmdet', type='CocoDataset', ...)``. The order
            of the keys is the task order. Configs are built with ``lazy_init=True``
            and loaded by :meth:`full_init`.
        lazy_init (bool): Defer loading the annotations to :meth:`full_init`.
            Defaults to False.
    """

    def __init__(self,
                 datasets: Dict[str, Union[dict, BaseDataset]],
                 lazy_init: bool = False):
        # Not ConcatDataset.__init__: it requires equal metainfo of all datasets.
        if not isinstance(datasets, dict) or not datasets:
            raise ValueError('HeterogeneousDataset: `datasets` must be a non-empty '
                             f'dict of task name -> dataset, got {datasets!r}')
        #: Task name -> its dataset, in task order.
        self.task_datasets: Dict[str, BaseDataset] = {}
        for task, dataset in datasets.items():
            if isinstance(dataset, dict):
                dataset = build_task_dataset(task, dataset)
            elif not isinstance(dataset, BaseDataset):
                raise TypeError(f"HeterogeneousDataset: task '{task}' must be a "
                                f'dataset config or a BaseDataset, got {type(dataset)}')
            self.task_datasets[task] = dataset
        self.datasets = list(self.task_datasets.values())
        self._fully_initialized = False
        if not lazy_init:
            self.full_init()

    @property
    def task_names(self) -> Tuple[str, ...]:
        """Task names in task order."""
        return tuple(self.task_datasets)

    @property
    def metainfo(self) -> dict:
        """Task -> a copy of that dataset's metainfo."""
        return {task: dataset.metainfo for task, dataset in self.task_datasets.items()}

    def full_init(self) -> None:
        """Load and check every task's dataset (:func:`load_task_dataset`) and lay
        out the global index ranges."""
        if self._fully_initialized:
            return
        for task, dataset in self.task_datasets.items():
            load_task_dataset(task, dataset)
        super().full_init()

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
    def locate(self, index: int) -> Tuple[str, int]:
        """Global index -> (task, index in that task's dataset)."""
        if not 0 <= index < len(self):
            raise IndexError(f'index {index} out of range for {len(self)} samples')
        position, local = self._get_ori_dataset_idx(index)
        return self.task_names[position], local

    def task_of(self, index: int) -> str:
        """The task of a global index."""
        return self.locate(index)[0]

    def __getitem__(self, index: Union[int, SeededIndex]) -> dict:
        """The packed sample of a global index, tagged with its task.

        ``index`` is an int, or an ``(index, seed)`` pair
        (:class:`~mod_squad.datasets.SeededIndex`): its pipeline then draws from
        torch's CPU, numpy's global and ``random``'s generators seeded with ``seed``,
        and those generators are put back as they were afterwards
        (:func:`~mod_squad.datasets.seeded_index.seeded_random_state`).
        """
        if isinstance(index, tuple):
            index, seed = index
            with seeded_random_state(seed):
                return self[index]
        task, local = self.locate(index)
        sample = self.task_datasets[task][local]
        sample['task'] = task
        return sample
