"""Single-task batches: one task per iteration, drawn by ratio, equal on all ranks."""
import logging
import math
from typing import Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
from mmengine.dist import get_dist_info, sync_random_seed
from mmengine.logging import print_log
from torch.utils.data import Sampler

from mod_squad.registry import DATA_SAMPLERS
from .seeded_index import SeededIndex

#: Task draws are generated this many iterations at a time.
DRAW_BLOCK = 1024
# Domains of the random streams, so that their seed sequences never coincide.
_DRAWS, _SHARDS, _SAMPLES = 0, 1, 2


def _normalise(ratios: Dict[str, float]) -> Dict[str, float]:
    total = sum(ratios.values())
    return {task: ratio / total for task, ratio in ratios.items()}


@DATA_SAMPLERS.register_module()
class TaskBatchSampler(Sampler):
    """Batch sampler of a :class:`~mod_squad.datasets.HeterogeneousDataset` that
    gives every iteration one task, the same on all ranks.

    Iteration ``i`` draws its task from ``ratios`` with a generator that is a pure
    function of ``(seed, i)`` (drawn in blocks of :data:`DRAW_BLOCK` iterations), so all
    ranks agree without communicating and any iteration can be reached by replaying
    draws only (:meth:`set_iter`). The batch is the next ``batch_sizes[task]`` indices
    of that task's per-rank stream: passes over the task's dataset, each shuffled with
    ``(seed, task, pass)``, padded to a multiple of the world size by repeating its
    start and sharded ``[rank::world_size]`` as ``DefaultSampler`` does, so ranks read
    disjoint samples within a pass. Streams are infinite: a batch may span two passes.

    Yields lists of :class:`~mod_squad.datasets.SeededIndex`: each global dataset
    index with the seed of its augmentations, drawn from ``(seed, rank, iteration,
    position in the batch)``; the dataset runs the sample's pipeline from that seed.
    So the augmentations, like the samples, are a function of the iteration, whichever
    data worker loads them and however many batches it loaded before: a resumed run
    (:meth:`set_iter`, :meth:`load_state_dict`), whose workers start afresh, sees the
    same augmented batches as an uninterrupted one, for any ``num_workers``.

    An *epoch* (``len(self)``) is the number of iterations in which, at the configured
    ratios, every task is expected to go once through its per-rank shard, i.e. one
    pass of the slowest task: ``max_t ceil(ceil(shard_t / batch_t) / p_t)`` with
    ``shard_t = ceil(len(dataset_t) / world_size)`` and ``p_t`` the normalised ratio.
    Epoch ``e`` is iterations ``[e * len, (e + 1) * len)``; iterating yields from the
    current iteration to the end of its epoch and the position persists, so
    re-iterating (as mmengine's ``IterBasedTrainLoop`` does after each epoch, with a
    2 s pause) continues the sequence. Iteration-based training is the intended use;
    ``EpochBasedTrainLoop`` also works, an epoch being ``len(self)`` iterations.

    Args:
        sampler (Sampler): The dataloader's sampler, e.g. ``DefaultSampler``. Only its
            ``dataset``, ``seed``, ``shuffle``, ``rank`` and ``world_size`` are used,
            not its indices.
        batch_size (int, optional): Batch size of the tasks missing from
            ``batch_sizes``; mmengine passes the dataloader's ``batch_size``.
        batch_sizes (dict[str, int], optional): Task -> batch size per rank.
        ratios (dict[str, float] | list[float], optional): Relative frequency of each
            task: a dict keyed by the dataset's tasks, or a list in task order. None
            gives every task the same ratio. A ratio of 0 keeps a task untrained
            but evaluated, e.g. the old tasks while fine-tuning on a new one (the
            model's branches and the train dataset's tasks must match, so such a
            task keeps its train dataset); it is warned about.
    """

    def __init__(self,
                 sampler: Sampler,
                 batch_size: Optional[int] = None,
                 batch_sizes: Optional[Dict[str, int]] = None,
                 ratios: Union[Dict[str, float], Sequence[float], None] = None):
        self.sampler = sampler  # read by mmengine's hooks, as torch's BatchSampler's
        dataset = sampler.dataset
        if not hasattr(dataset, 'task_ranges'):
            raise TypeError('TaskBatchSampler needs a HeterogeneousDataset, got '
                            f'{type(dataset).__name__}')
        self.task_names = tuple(dataset.task_names)
        self._ranges = list(dataset.task_ranges.values())
        rank, world_size = get_dist_info()
        self.rank = getattr(sampler, 'rank', rank)
        self.world_size = getattr(sampler, 'world_size', world_size)
        self.shuffle = getattr(sampler, 'shuffle', True)
        seed = getattr(sampler, 'seed', None)
        self.seed = sync_random_seed() if seed is None else seed
        self.ratios = self._parse_ratios(ratios)
        self.batch_sizes = self._parse_batch_sizes(batch_size, batch_sizes)
        for task, indices in zip(self.task_names, self._ranges):
            if self.ratios[task] > 0 and not len(indices):
                raise ValueError(f"TaskBatchSampler: task '{task}' has ratio "
                                 f'{self.ratios[task]} but its dataset is empty')
        self._sizes = list(self.batch_sizes.values())
        self._shard_lens = [math.ceil(len(r) / self.world_size) for r in self._ranges]
        self._bounds = np.cumsum(list(_normalise(self.ratios).values()))[:-1]
        self._epoch_len = self._epoch_length()
        self._draw_cache: tuple = (None, None)  # (key, task ids of one block)
        self._shard_cache: Dict[int, tuple] = {}  # task -> (key, shard of one pass)
        self.set_iter(0)

    def _parse_ratios(self, ratios) -> Dict[str, float]:
        if ratios is None:
            ratios = dict.fromkeys(self.task_names, 1.)
        elif isinstance(ratios, dict):
            if set(ratios) != set(self.task_names):
                raise ValueError(
                    f'TaskBatchSampler: ratio keys {sorted(ratios)} must be the '
                    f"dataset's tasks {list(self.task_names)}")
            ratios = {t: ratios[t] for t in self.task_names}
        elif isinstance(ratios, Sequence) and not isinstance(ratios, str):
            if len(ratios) != len(self.task_names):
                raise ValueError(
                    f'TaskBatchSampler: {len(ratios)} ratios {list(ratios)} for '
                    f'{len(self.task_names)} tasks {list(self.task_names)}')
            ratios = dict(zip(self.task_names, ratios))
        else:
            raise TypeError('TaskBatchSampler: `ratios` must be a dict, a list or '
                            f'None, got {type(ratios).__name__}')
        ratios = {t: float(r) for t, r in ratios.items()}
        if not all(math.isfinite(r) and r >= 0 for r in ratios.values()) or \
                sum(ratios.values()) <= 0:
            raise ValueError('TaskBatchSampler: ratios must be finite, >= 0 and not '
                             f'all zero, got {ratios}')
        untrained = [t for t, r in ratios.items() if r == 0]
        if untrained:
            print_log(
                f'TaskBatchSampler: tasks {untrained} have ratio 0: they are never '
                'trained, only evaluated (if the val loop has them); give them a '
                'ratio > 0 to train them',
                logger='current',
                level=logging.WARNING)
        return ratios

    def _parse_batch_sizes(self, batch_size, batch_sizes) -> Dict[str, int]:
        batch_sizes = dict(batch_sizes or {})
        unknown = set(batch_sizes) - set(self.task_names)
        if unknown:
            raise ValueError(f'TaskBatchSampler: batch_sizes for unknown tasks '
                             f'{sorted(unknown)}; tasks are {list(self.task_names)}')
        if batch_size is not None:
            batch_sizes = {t: batch_sizes.get(t, batch_size) for t in self.task_names}
        missing = [t for t in self.task_names if t not in batch_sizes]
        if missing:
            raise ValueError(f'TaskBatchSampler: no batch size for tasks {missing}; '
                             'set `batch_sizes` (or a default `batch_size`)')
        for task, size in batch_sizes.items():
            if not isinstance(size, int) or size < 1:
                raise ValueError(f"TaskBatchSampler: batch size of task '{task}' "
                                 f'must be a positive int, got {size!r}')
        return {t: batch_sizes[t] for t in self.task_names}

    def _epoch_length(self) -> int:
        total = sum(self.ratios.values())
        return max(  # - 1e-9: float noise must not add an iteration
            math.ceil(math.ceil(length / size) * total / ratio - 1e-9)
            for length, size, ratio in zip(self._shard_lens, self._sizes,
                                           self.ratios.values()) if ratio > 0)

    def _draws(self, block: int) -> np.ndarray:
        """Task ids (DRAW_BLOCK,) of iterations ``[block * DRAW_BLOCK, ...)``."""
        key = [self.seed, _DRAWS, block]
        if self._draw_cache[0] != key:
            uniform = np.random.default_rng(key).random(DRAW_BLOCK)
            self._draw_cache = (key, np.searchsorted(self._bounds, uniform, 'right'))
        return self._draw_cache[1]

    def _task_id(self, iteration: int) -> int:
        block, offset = divmod(iteration, DRAW_BLOCK)
        return int(self._draws(block)[offset])

    def task_at(self, iteration: int) -> str:
        """The task of an iteration (the same on every rank)."""
        return self.task_names[self._task_id(iteration)]

    def _shard(self, task: int, cycle: int) -> np.ndarray:
        """Global indices (shard_len,) this rank reads in pass ``cycle`` of a task."""
        key = [self.seed, _SHARDS, task, cycle]
        if self._shard_cache.get(task, (None, ))[0] != key:
            indices = self._ranges[task]
            order = (np.random.default_rng(key).permutation(len(indices))
                     if self.shuffle else np.arange(len(indices)))
            order = np.resize(order, self._shard_lens[task] * self.world_size)
            shard = order[self.rank::self.world_size] + indices.start
            self._shard_cache[task] = (key, shard)
        return self._shard_cache[task][1]

    def _batch(self, task: int) -> List[int]:
        """The next batch of a task's per-rank stream."""
        start, size = self._consumed[task], self._sizes[task]
        length = self._shard_lens[task]
        self._consumed[task] += size
        first, last = start // length, (start + size - 1) // length
        shards = [self._shard(task, cycle) for cycle in range(first, last + 1)]
        stream = shards[0] if len(shards) == 1 else np.concatenate(shards)
        offset = start - first * length
        return stream[offset:offset + size].tolist()

    def set_iter(self, iteration: int) -> None:
        """Continue at ``iteration`` as if the earlier ones had been iterated; replays
        only the task draws, loads nothing."""
        counts = np.zeros(len(self.task_names), np.int64)
        full, rest = divmod(iteration, DRAW_BLOCK)
        for block in range(full + 1):
            draws = self._draws(block)[:rest] if block == full else self._draws(block)
            counts += np.bincount(draws, minlength=len(counts))
        self._consumed = (counts * self._sizes).tolist()
        self._iter = iteration

    def _seeded(self, iteration: int, indices: List[int]) -> List[SeededIndex]:
        """The indices of an iteration's batch, each with its sample seed."""
        key = [self.seed, _SAMPLES, self.rank, iteration]
        seeds = np.random.SeedSequence(key).generate_state(len(indices))
        return [SeededIndex(i, seed) for i, seed in zip(indices, seeds.tolist())]

    def __iter__(self) -> Iterator[List[SeededIndex]]:
        end = (self._iter // len(self) + 1) * len(self)
        while self._iter < end:
            iteration = self._iter
            self._iter += 1
            yield self._seeded(iteration, self._batch(self._task_id(iteration)))

    def __len__(self) -> int:
        """Iterations of one epoch (see the class docstring)."""
        return self._epoch_len

    def state_dict(self) -> dict:
        """Seed, ratios, batch sizes and the next iteration to yield (ahead of the
        training loop by the batches the dataloader has prefetched)."""
        return dict(seed=self.seed,
                    ratios=dict(self.ratios),
                    batch_sizes=dict(self.batch_sizes),
                    iteration=self._iter)

    def load_state_dict(self, state: dict) -> None:
        """Continue a saved sampler: adopt its seed and iteration. Ratios and batch
        sizes stay as configured; a difference is warned about, since the task
        sequence then differs from the saved run's."""
        if state['seed'] != self.seed:
            print_log(
                f"TaskBatchSampler: using the checkpoint's seed {state['seed']} "
                f'instead of {self.seed} to continue its task sequence',
                logger='current',
                level=logging.WARNING)
            self.seed = state['seed']
        changed = []
        old = _normalise(state['ratios'])
        new = _normalise(self.ratios)
        if old.keys() != new.keys() or not np.allclose([old[t] for t in new],
                                                       list(new.values())):
            changed.append(f"ratios {state['ratios']} -> {self.ratios}")
        if state['batch_sizes'] != self.batch_sizes:
            changed.append(f"batch_sizes {state['batch_sizes']} -> {self.batch_sizes}")
        if changed:
            print_log(
                f'TaskBatchSampler: the config changed the checkpoint\'s '
                f'{"; ".join(changed)}: the task sequence after iteration '
                f"{state['iteration']} differs from the saved run's",
                logger='current',
                level=logging.WARNING)
        self.set_iter(state['iteration'])
