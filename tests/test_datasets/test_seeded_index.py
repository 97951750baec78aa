"""SeededIndex: a sample's augmentations are a function of its seed, not of the
process, worker or random draws that came before it."""
import copy
import random
from itertools import islice
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mod_squad.datasets import HeterogeneousDataset, SeededIndex, TaskBatchSampler


@pytest.fixture
def datasets_cfg(demo_cfg):
    """The demo's training datasets, with random crops after the random flips."""
    cfg = copy.deepcopy(demo_cfg.train_dataloader.dataset.datasets.to_dict())
    cfg['det']['pipeline'].insert(-1, dict(type='RandomCrop', crop_size=(96, 96)))
    cfg['seg']['pipeline'].insert(-1, dict(type='RandomCrop', crop_size=(32, 32)))
    return cfg


def fingerprint(sample: dict) -> tuple:
    """What the random transforms change: pixels, boxes, segmentation map, flip."""
    data_sample = sample['data_samples']
    gt = [data_sample.gt_instances.bboxes.tensor] if 'gt_instances' in data_sample else []
    gt += [data_sample.gt_sem_seg.data] if 'gt_sem_seg' in data_sample else []
    return (sample['inputs'], *gt, data_sample.metainfo.get('flip'))


def assert_same(first: tuple, second: tuple):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def draws() -> tuple:
    return torch.rand(2), np.random.rand(2), random.random()


def test_same_seed_gives_the_same_sample_in_fresh_datasets(datasets_cfg):
    first = HeterogeneousDataset(copy.deepcopy(datasets_cfg))
    for task, indices in first.task_ranges.items():
        for seed in (0, 7, 2**32 - 1):
            pair = SeededIndex(indices[1], seed)
            expected = fingerprint(first[pair])
            draws()  # other draws in between do not matter
            assert_same(fingerprint(first[pair]), expected)
            second = HeterogeneousDataset({task: copy.deepcopy(datasets_cfg[task])})
            assert_same(fingerprint(second[SeededIndex(1, seed)]), expected)


def test_the_seed_decides_the_augmentations(datasets_cfg):
    dataset = HeterogeneousDataset(datasets_cfg)
    for task, indices in dataset.task_ranges.items():
        samples = [fingerprint(dataset[SeededIndex(indices[0], s)]) for s in range(8)]
        flips = {sample[-1] for sample in samples}
        assert flips == {True, False}, task
        shapes = {sample[0].shape for sample in samples}
        assert task == 'det' or len(shapes) == 1, task  # crops of a fixed size
        # A plain index runs from the process's generators: seeded alike, alike.
        torch.manual_seed(3), np.random.seed(3), random.seed(3)
        assert_same(fingerprint(dataset[indices[0]]), samples[3])


def test_seeded_sample_leaves_the_process_generators_alone(datasets_cfg):
    dataset = HeterogeneousDataset(datasets_cfg)
    state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    expected = draws()
    torch.set_rng_state(state[0]), np.random.set_state(state[1]), random.setstate(state[2])
    for indices in dataset.task_ranges.values():
        dataset[SeededIndex(indices[0], 5)]
    after = draws()
    assert torch.equal(after[0], expected[0]) and np.array_equal(after[1], expected[1])
    assert after[2] == expected[2]


def test_batches_do_not_depend_on_the_worker_that_loads_them(datasets_cfg):
    dataset = HeterogeneousDataset(datasets_cfg)

    def load(num_workers):
        torch.manual_seed(num_workers)  # the workers' seeds differ too
        sampler = TaskBatchSampler(SimpleNamespace(dataset=dataset, seed=0),
                                   batch_size=2)
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                            collate_fn=list)
        return [[fingerprint(s) for s in batch] for batch in islice(loader, 6)]

    reference = load(0)
    assert len(reference) == 6
    for batch, other in zip(reference, load(2), strict=True):
        for first, second in zip(batch, other, strict=True):
            assert_same(first, second)
