"""A dataset index that carries the seed of its sample's random augmentations."""
import random
from contextlib import contextmanager
from typing import Iterator, NamedTuple

import numpy as np
import torch


class SeededIndex(NamedTuple):
    """A global dataset index and the seed its pipeline runs with.

    :class:`~mod_squad.datasets.TaskBatchSampler` yields these, and
    :class:`~mod_squad.datasets.HeterogeneousDataset` runs the pipeline of ``index``
    inside :func:`seeded_random_state` ``(seed)``, so that a sample's augmentations
    depend on the seed only, not on the data worker that loads it or on what that
    worker drew before.
    """
    index: int
    seed: int  # in [0, 2**32), numpy's legacy seeding range


@contextmanager
def seeded_random_state(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator, numpy's global generator and ``random`` with
    ``seed`` for the block, then put back their states from before it.

    These are the generators the mmcv, mmdet, mmseg and mmpretrain transforms draw
    from. CUDA generators are left alone (transforms run on CPU), and so are the
    process's own streams, e.g. the training's when the main process loads the
    data (``num_workers=0``).
    """
    states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    torch.default_generator.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])
