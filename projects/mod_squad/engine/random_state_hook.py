"""Keep the random number generators' states in checkpoints, so resume is exact."""
import logging
import random
from typing import List, Optional

import numpy as np
import torch
from mmengine.dist import all_gather_object, get_dist_info
from mmengine.hooks import Hook
from mmengine.logging import print_log

from mod_squad.registry import HOOKS


def capture_random_state() -> dict:
    """This process's torch (CPU and current CUDA device), numpy and ``random``
    states, as tensors, strings, numbers and tuples only, so that the checkpoint
    still loads with ``torch.load(weights_only=True)``."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = dict(
        torch=torch.get_rng_state(),
        numpy=(name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
               float(cached_gaussian)),
        random=random.getstate())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state()
    return state


def restore_random_state(state: dict) -> None:
    """Inverse of :func:`capture_random_state`."""
    torch.set_rng_state(state['torch'])
    name, keys, pos, has_gauss, cached_gaussian = state['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss,
                         cached_gaussian))
    random.setstate(state['random'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'])


@HOOKS.register_module()
class RandomStateHook(Hook):
    """Save every rank's random number generator states in checkpoints (key
    ``'random_state'``, a list indexed by rank) and restore them on resume, so that a
    resumed run draws the same augmentations, dropout and samples as an uninterrupted
    one.

    - Saved: the states at the end of the last trained iteration (or epoch), taken
      in ``after_train_iter`` before :class:`~mmengine.hooks.CheckpointHook` runs.
      mmengine writes checkpoints on rank 0 only, so in a distributed run the ranks
      gather their states every iteration (one ``all_gather_object`` of a few KB).
    - Restored: in the first ``before_train_epoch`` of a resumed run, which
      :class:`~mod_squad.engine.TaskIterBasedTrainLoop` calls after it has positioned
      the data. A checkpoint only loaded for its weights (``load_from``) restores
      nothing; one saved by another number of ranks is not restored, with a warning.
    - Validation is kept out of the training's random streams (the states are put
      back after it), since a resumed run does not repeat the validation that
      followed its checkpoint.

    Data workers (``num_workers > 0``) are not covered by this hook: mmengine seeds
    each worker once, when it starts, and the workers of a resumed run start afresh.
    :class:`~mod_squad.datasets.TaskBatchSampler` makes that irrelevant: each of its
    samples carries a seed of ``(seed, rank, iteration, position)`` that
    :class:`~mod_squad.datasets.HeterogeneousDataset` runs its pipeline from, so the
    augmentations are reproduced for any ``num_workers``. With other samplers they
    are reproduced only with ``num_workers=0`` (they then run in the main process).

    :class:`~mod_squad.engine.TaskIterBasedTrainLoop` registers this hook itself; add
    it to ``custom_hooks`` for mmengine's loops. ``EpochBasedTrainLoop`` resumes at an
    epoch start and is reproduced as above. ``IterBasedTrainLoop`` resumes by loading
    and dropping the trained batches after ``before_train_epoch``, so with
    ``num_workers=0`` their augmentations consume the restored states.
    """

    priority = 'LOW'  # after most hooks, before CheckpointHook (VERY_LOW)
    key = 'random_state'

    def __init__(self):
        self._saved: Optional[List[dict]] = None
        self._loaded: Optional[List[dict]] = None
        self._before_val: Optional[dict] = None

    @staticmethod
    def _all_ranks_state() -> List[dict]:
        state = capture_random_state()
        _, world_size = get_dist_info()
        return all_gather_object(state) if world_size > 1 else [state]

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self._saved = self._all_ranks_state()

    def after_train_epoch(self, runner) -> None:
        self._saved = self._all_ranks_state()

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self._saved is not None:
            checkpoint[self.key] = self._saved

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        # ``resume`` sets the loop's iteration after this; restore in
        # ``before_train_epoch``, once the data is positioned.
        self._loaded = checkpoint.get(self.key)

    def before_train_epoch(self, runner) -> None:
        loaded, self._loaded = self._loaded, None
        if runner.iter == 0:  # a new run, or ``load_from``
            return
        rank, world_size = get_dist_info()
        if loaded is None:
            message = 'the checkpoint holds no random states'
        elif len(loaded) != world_size:
            message = (f'the checkpoint holds the random states of {len(loaded)} '
                       f'ranks, this run has {world_size}')
        else:
            restore_random_state(loaded[rank])
            return
        print_log(
            f'RandomStateHook: {message}; the random streams continue from the '
            'seed of this run, so augmentations and other random draws differ from '
            'those of an uninterrupted run',
            logger='current',
            level=logging.WARNING)

    def before_val(self, runner) -> None:
        self._before_val = capture_random_state()

    def after_val(self, runner) -> None:
        if self._before_val is not None:
            restore_random_state(self._before_val)
            self._before_val = None
