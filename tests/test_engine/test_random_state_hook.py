"""RandomStateHook: a resumed run draws the same random numbers as an uninterrupted
one, so its final weights are bit-identical."""
import io
import random

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from mmcv.transforms import RandomFlip
from mmengine.dataset import BaseDataset
from mmengine.model import BaseModel
from mmengine.runner import Runner

from mod_squad.engine import random_state_hook
from mod_squad.engine.random_state_hook import (RandomStateHook, capture_random_state,
                                                restore_random_state)

STOP, MAX_ITERS = 3, 6


def jitter(results: dict) -> dict:
    """An augmentation that draws from Python's ``random``."""
    results['img'] = results['img'] + random.random()
    return results


def pack(results: dict) -> dict:
    return dict(inputs=torch.from_numpy(results['img']).flatten(),
                data_samples=results['sample_idx'])


class ImageDataset(BaseDataset):
    """Distinct 2x3 'images', flipped (numpy's generator) and jittered (``random``)."""

    def __init__(self, size: int, **kwargs):
        self.size = size
        super().__init__(pipeline=[RandomFlip(prob=0.5), jitter, pack], **kwargs)

    def load_data_list(self):
        return [dict(img=np.arange(6, dtype=np.float32).reshape(2, 3) / (i + 1))
                for i in range(self.size)]


class DropoutModel(BaseModel):
    """A linear regression behind dropout (torch's generator)."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(6, 1)
        self.dropout = torch.nn.Dropout(0.5)

    def forward(self, inputs, data_samples=None, task=None, mode='loss'):
        outputs = self.linear(self.dropout(torch.stack(inputs)))
        return dict(loss=(outputs - 1).pow(2).mean())


def train(work_dir, max_iters, resume=False, num_workers=0):
    runner = Runner(
        model=dict(type=DropoutModel),  # built after the runner seeds torch
        work_dir=str(work_dir),
        experiment_name=f'{max_iters}_{resume}',
        train_dataloader=dict(
            batch_size=None,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            sampler=dict(type='DefaultSampler', shuffle=True),
            batch_sampler=dict(type='mod_squad.TaskBatchSampler',
                               batch_sizes=dict(cls=2, det=1),
                               ratios=dict(cls=1, det=1)),
            collate_fn=dict(type='pseudo_collate'),
            dataset=dict(type='mod_squad.HeterogeneousDataset',
                         datasets=dict(cls=dict(type=ImageDataset, size=4),
                                       det=dict(type=ImageDataset, size=3)))),
        train_cfg=dict(type='mod_squad.TaskIterBasedTrainLoop', max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=STOP, by_epoch=False)),
        randomness=dict(seed=0, deterministic=True),
        resume=resume,
        default_scope='mod_squad')
    runner.train()
    # Stop the workers now: in a later garbage collection they take seconds to join.
    runner.train_loop.dataloader_iterator = runner.train_dataloader._iterator = None
    return runner.model.state_dict()


# With workers, the augmentations run in worker processes, which a resumed run starts
# afresh: they are reproduced by the sampler's per-sample seeds.
@pytest.mark.parametrize('num_workers', [0, 2])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, num_workers):
    reference = train(tmp_path / 'reference', MAX_ITERS, num_workers=num_workers)
    train(tmp_path / 'run', STOP, num_workers=num_workers)
    resumed = train(tmp_path / 'run', MAX_ITERS, resume=True, num_workers=num_workers)
    assert all(torch.equal(resumed[key], reference[key]) for key in reference)

    # The check can fail: the same resume without the saved states does not match.
    checkpoint_file = tmp_path / 'run' / f'iter_{STOP}.pth'
    checkpoint = torch.load(checkpoint_file, weights_only=False)
    assert len(checkpoint.pop(RandomStateHook.key)) == 1  # one rank
    torch.save(checkpoint, checkpoint_file)
    (tmp_path / 'run' / f'iter_{MAX_ITERS}.pth').unlink()
    (tmp_path / 'run' / 'last_checkpoint').write_text(str(checkpoint_file))
    unrestored = train(tmp_path / 'run', MAX_ITERS, resume=True, num_workers=num_workers)
    assert not torch.equal(unrestored['linear.weight'], reference['linear.weight'])


def draws():
    return (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())


def assert_same_draws(first, second):
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert first[2:] == second[2:]


def test_states_load_with_weights_only_and_restore_the_draws():
    np.random.randn()  # numpy then caches a Gaussian: part of its state
    buffer = io.BytesIO()
    torch.save(dict(random_state=[capture_random_state()]), buffer)
    expected = draws()
    buffer.seek(0)
    restore_random_state(torch.load(buffer, weights_only=True)['random_state'][0])
    assert_same_draws(draws(), expected)


class FakeRunner:

    def __init__(self, iteration):
        self.iter = iteration


def test_validation_leaves_the_training_draws_unchanged():
    hook, state = RandomStateHook(), capture_random_state()
    expected = draws()
    restore_random_state(state)
    hook.before_val(FakeRunner(3))
    draws()  # e.g. the validation dataloader drawing its base seed
    hook.after_val(FakeRunner(3))
    assert_same_draws(draws(), expected)


def saved_states(copies=1):
    """The checkpoint of a hook saving after an iteration, its list of rank states
    repeated ``copies`` times (as if saved by more ranks)."""
    hook = RandomStateHook()
    hook.after_train_iter(FakeRunner(4), 4)
    checkpoint = {}
    hook.before_save_checkpoint(FakeRunner(4), checkpoint)
    checkpoint[RandomStateHook.key] *= copies
    return checkpoint


def test_restores_on_resume_only():
    checkpoint = saved_states()
    expected = draws()
    hook = RandomStateHook()
    hook.after_load_checkpoint(FakeRunner(0), checkpoint)
    hook.before_train_epoch(FakeRunner(0))  # ``load_from``: a new run
    after_load = draws()
    assert not torch.equal(after_load[0], expected[0])
    hook.after_load_checkpoint(FakeRunner(0), checkpoint)
    hook.before_train_epoch(FakeRunner(5))
    assert_same_draws(draws(), expected)


@pytest.mark.parametrize('checkpoint, message', [
    (dict(), 'the checkpoint holds no random states'),
    (saved_states(copies=2), 'the checkpoint holds the random states of 2 ranks, '
     'this run has 1'),
])
def test_warns_and_keeps_the_run_seed_when_states_cannot_be_restored(
        checkpoint, message, monkeypatch):
    logs = []
    monkeypatch.setattr(random_state_hook, 'print_log',
                        lambda msg, **_: logs.append(msg))
    hook = RandomStateHook()
    hook.after_load_checkpoint(FakeRunner(0), checkpoint)
    state = capture_random_state()
    expected = draws()
    restore_random_state(state)
    hook.before_train_epoch(FakeRunner(5))
    assert_same_draws(draws(), expected)  # nothing restored
    assert logs == [
        f'RandomStateHook: {message}; the random streams continue from the seed of '
        'this run, so augmentations and other random draws differ from those of an '
        'uninterrupted run'
    ]


def save_and_resume_on_rank(rank, world_size, init_file):
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank,
                            world_size=world_size)
    torch.manual_seed(rank)
    np.random.seed(rank)
    random.seed(rank)
    checkpoint = saved_states()  # gathered from all ranks
    expected = draws()
    states = checkpoint[RandomStateHook.key]
    assert len(states) == world_size
    assert not torch.equal(states[0]['torch'], states[1]['torch'])
    hook = RandomStateHook()
    hook.after_load_checkpoint(FakeRunner(0), checkpoint)
    hook.before_train_epoch(FakeRunner(5))
    assert_same_draws(draws(), expected)  # this rank's own states
    dist.destroy_process_group()


def test_each_rank_saves_and_restores_its_own_states(tmp_path):
    mp.start_processes(save_and_resume_on_rank, args=(2, str(tmp_path / 'rendezvous')),
                       nprocs=2, start_method='fork')
