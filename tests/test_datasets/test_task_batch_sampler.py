"""TaskBatchSampler: one task per iteration by ratio, the same on every rank, disjoint
shards, per-sample seeds, replayable position and state."""
import itertools
import time
from types import SimpleNamespace

import numpy as np
import pytest

from mod_squad.datasets import SeededIndex, task_batch_sampler
from mod_squad.datasets.task_batch_sampler import TaskBatchSampler

SIZES = dict(cls=40, det=20, seg=10)
BATCH_SIZES = dict(cls=4, det=2, seg=1)
RATIOS = dict(cls=15, det=10, seg=5)


def fake_dataset(sizes=SIZES):
    """The part of a HeterogeneousDataset the sampler reads."""
    ends = list(itertools.accumulate(sizes.values()))
    return SimpleNamespace(task_names=tuple(sizes),
                           task_ranges={
                               t: range(end - n, end)
                               for (t, n), end in zip(sizes.items(), ends)
                           })


def make_sampler(rank=0, world_size=1, seed=0, shuffle=True, sizes=SIZES, **kwargs):
    sampler = SimpleNamespace(dataset=fake_dataset(sizes),
                              seed=seed,
                              shuffle=shuffle,
                              rank=rank,
                              world_size=world_size)
    kwargs = dict(dict(batch_sizes=BATCH_SIZES, ratios=RATIOS), **kwargs)
    return TaskBatchSampler(sampler, **kwargs)


def take(sampler, num):
    """The next ``num`` batches, re-iterating at each epoch end as mmengine does."""
    epochs = (iter(sampler) for _ in itertools.count())
    return list(itertools.islice(itertools.chain.from_iterable(epochs), num))


def indices(batch):
    """The dataset indices of a batch of ``(index, seed)`` pairs."""
    return [index for index, _ in batch]


def task_of(batch, sizes=SIZES):
    ranges = fake_dataset(sizes).task_ranges
    tasks = {t for t, r in ranges.items() for i in indices(batch) if i in r}
    assert len(tasks) == 1, f'batch {batch} mixes tasks {tasks}'
    return tasks.pop()


def per_task_streams(batches):
    streams = {t: [] for t in SIZES}
    for batch in batches:
        streams[task_of(batch)] += indices(batch)
    return streams


def test_task_frequencies_follow_the_ratios():
    sampler = make_sampler()
    tasks = [task_of(batch) for batch in take(sampler, 3000)]
    total = sum(RATIOS.values())
    for task, ratio in RATIOS.items():
        assert tasks.count(task) / len(tasks) == pytest.approx(ratio / total, abs=0.03)
    assert tasks == [sampler.task_at(i) for i in range(3000)]


def test_every_batch_is_one_task_at_its_batch_size():
    for batch in take(make_sampler(), 300):
        assert len(batch) == BATCH_SIZES[task_of(batch)]


def test_ratios_default_to_equal_and_lists_follow_the_task_order():
    assert make_sampler(ratios=None).ratios == dict(cls=1., det=1., seg=1.)
    assert make_sampler(sizes=dict(cls=4, depth=4), ratios=None,
                        batch_sizes=dict(cls=1, depth=1)).ratios == dict(cls=1., depth=1.)
    assert make_sampler(ratios=[15, 10, 5]).ratios == dict(cls=15., det=10., seg=5.)


def test_zero_ratio_task_is_never_drawn_and_warned_about(monkeypatch):
    logs = []
    monkeypatch.setattr(task_batch_sampler, 'print_log',
                        lambda msg, **_: logs.append(msg))
    sampler = make_sampler(ratios=dict(cls=1, det=0, seg=1))
    assert 'det' not in {task_of(b) for b in take(sampler, 500)}
    assert logs == ["TaskBatchSampler: tasks ['det'] have ratio 0: they are never "
                    'trained, only evaluated (if the val loop has them); give them a '
                    'ratio > 0 to train them']


def test_ranks_draw_the_same_tasks_and_disjoint_samples_covering_each_pass():
    ranks = [make_sampler(rank=r, world_size=2) for r in range(2)]
    batches = [take(sampler, 400) for sampler in ranks]
    assert [task_of(b) for b in batches[0]] == [task_of(b) for b in batches[1]]
    streams = [per_task_streams(b) for b in batches]
    for task, size in SIZES.items():
        shard = size // 2
        num_passes = min(len(s[task]) for s in streams) // shard
        assert num_passes >= 2
        passes = [[s[task][p * shard:(p + 1) * shard] for s in streams]
                  for p in range(num_passes)]
        for first, second in passes:
            assert set(first).isdisjoint(second)
            assert sorted(first + second) == list(fake_dataset().task_ranges[task])
        assert passes[0] != passes[1], 'each pass is reshuffled'


def test_uneven_dataset_is_padded_to_equal_shards():
    sizes = dict(cls=7, det=3, seg=5)
    ranks = [make_sampler(rank=r, world_size=2, sizes=sizes) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1])
    for task in sizes:  # the first pass of each rank: ceil(n / 2) samples
        shard = -(-sizes[task] // 2)
        heads = [[i for b in take(s, 200) if task_of(b, sizes) == task
                  for i in indices(b)][:shard] for s in ranks]
        assert set(heads[0]) | set(heads[1]) == set(
            fake_dataset(sizes).task_ranges[task])


def test_samples_carry_seeds_of_the_seed_rank_iteration_and_position():
    batches = take(make_sampler(), 300)
    assert all(isinstance(pair, SeededIndex) for batch in batches for pair in batch)
    seeds = [seed for batch in batches for _, seed in batch]
    assert all(0 <= seed < 2**32 for seed in seeds)
    assert len(set(seeds)) == len(seeds), 'positions and iterations differ'

    def seeds_of(**kwargs):
        return [[seed for _, seed in batch] for batch in take(make_sampler(**kwargs), 50)]

    assert seeds_of() == seeds_of() == [[seed for _, seed in b] for b in batches[:50]]
    for other in (seeds_of(seed=1), seeds_of(rank=1, world_size=2)):
        assert all(set(a).isdisjoint(b) for a, b in zip(seeds_of(), other))


def test_unshuffled_streams_are_in_dataset_order():
    streams = per_task_streams(take(make_sampler(shuffle=False), 200))
    assert streams['cls'][:45] == list(range(40)) + list(range(5))


def test_epoch_is_one_pass_of_the_slowest_task_at_its_ratio():
    # Batches per pass: cls 40/4, det 20/2, seg 10/1 = 10 each; at p = 1/2, 1/3, 1/6
    # seg needs the most iterations: 10 * 6.
    assert len(make_sampler()) == 60
    # Per rank with 2 ranks: 5 batches of each task -> 30.
    assert len(make_sampler(world_size=2)) == 30


def test_reiterating_continues_the_sequence():
    sampler, reference = make_sampler(), take(make_sampler(), 150)
    first, second = list(sampler), list(sampler)
    assert len(first) == len(second) == len(sampler) == 60
    assert first + second == reference[:120]


def test_set_iter_continues_like_an_uninterrupted_run():
    reference = take(make_sampler(), 2500)
    for start in (0, 7, 60, 1024, 2100):
        sampler = make_sampler()
        take(sampler, 3)  # a position the seek must overwrite
        sampler.set_iter(start)
        assert take(sampler, 2500 - start) == reference[start:], start


def test_set_iter_only_replays_draws():
    sampler = make_sampler()
    start = time.perf_counter()
    sampler.set_iter(10**6)
    assert time.perf_counter() - start < 2
    assert len(take(sampler, 1)[0]) == BATCH_SIZES[sampler.task_at(10**6)]


def test_state_dict_round_trip_continues_the_sequence(monkeypatch):
    logs = []
    monkeypatch.setattr(task_batch_sampler, 'print_log',
                        lambda msg, **_: logs.append(msg))
    reference = take(make_sampler(seed=3), 300)
    saved = make_sampler(seed=3)
    take(saved, 123)
    state = saved.state_dict()
    assert state == dict(seed=3,
                         ratios=dict(cls=15., det=10., seg=5.),
                         batch_sizes=BATCH_SIZES,
                         iteration=123)
    resumed = make_sampler(seed=99)
    resumed.load_state_dict(state)
    assert resumed.seed == 3 and resumed.state_dict() == state
    assert take(resumed, 177) == reference[123:]
    assert len(logs) == 1 and "checkpoint's seed 3" in logs[0]


def test_loading_a_state_of_other_ratios_or_batch_sizes_warns(monkeypatch):
    logs = []
    monkeypatch.setattr(task_batch_sampler, 'print_log',
                        lambda msg, **_: logs.append(msg))
    state = make_sampler().state_dict()
    make_sampler(ratios=[3, 2, 1]).load_state_dict(state)  # same proportions
    assert logs == []
    make_sampler(ratios=[1, 1, 1], batch_sizes=dict(cls=8, det=2,
                                                    seg=1)).load_state_dict(state)
    assert len(logs) == 1 and 'ratios' in logs[0] and 'batch_sizes' in logs[0]


def test_batch_size_is_the_default_of_unlisted_tasks():
    sampler = make_sampler(batch_sizes=dict(det=3), batch_size=5)
    assert sampler.batch_sizes == dict(cls=5, det=3, seg=5)


@pytest.mark.parametrize('kwargs, match', [
    (dict(ratios=[1, 2]), r'2 ratios \[1, 2\] for 3 tasks'),
    (dict(ratios=dict(cls=1, det=1, depth=1)), r"ratio keys .* must be the dataset's"),
    (dict(ratios=dict(cls=1, det=1)), r"ratio keys .* must be the dataset's"),
    (dict(ratios=[1, -1, 1]), 'ratios must be finite, >= 0'),
    (dict(ratios=[0, 0, 0]), 'not all zero'),
    (dict(ratios='15:10:5'), '`ratios` must be'),
    (dict(batch_sizes=dict(cls=4, det=2)), r"no batch size for tasks \['seg'\]"),
    (dict(batch_sizes=dict(cls=4, det=2, seg=1, depth=1)),
     r"unknown tasks \['depth'\]"),
    (dict(batch_sizes=dict(cls=4, det=0, seg=1)), "task 'det' must be a positive int"),
])
def test_bad_config_raises_a_clear_error(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make_sampler(**kwargs)


def test_empty_dataset_with_a_ratio_is_rejected():
    with pytest.raises(ValueError, match="task 'seg' has ratio 5.0 but its dataset is"):
        make_sampler(sizes=dict(cls=4, det=4, seg=0))


def test_needs_a_heterogeneous_dataset():
    sampler = SimpleNamespace(dataset=list(range(4)), seed=0)
    with pytest.raises(TypeError, match='needs a HeterogeneousDataset, got list'):
        TaskBatchSampler(sampler, batch_size=2, ratios=[1])


def test_draws_are_seeded():
    tasks = [[make_sampler(seed=s).task_at(i) for i in range(200)] for s in (0, 0, 1)]
    assert tasks[0] == tasks[1] != tasks[2]
    assert np.mean([a == b for a, b in zip(tasks[0], tasks[2])]) < 0.7
