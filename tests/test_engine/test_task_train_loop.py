"""TaskIterBasedTrainLoop + TaskSamplerStateHook: a resumed mmengine run continues the
task sequence, the samples and the iteration count of an uninterrupted run."""
from types import SimpleNamespace

import pytest
import torch
from mmengine.dataset import BaseDataset
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.runner import Runner, loops

from mod_squad.datasets.heterogeneous_dataset import HeterogeneousDataset
from mod_squad.datasets.task_batch_sampler import TaskBatchSampler
from mod_squad.engine import task_sampler_state_hook, task_train_loop
from mod_squad.engine.task_sampler_state_hook import TaskSamplerStateHook

STOP, MAX_ITERS = 4, 10


def pack(results: dict) -> dict:
    return dict(inputs=torch.tensor([results['value']]),
                data_samples=results['sample_idx'])


class ToyDataset(BaseDataset):

    def __init__(self, size: int, **kwargs):
        self.size = size
        super().__init__(pipeline=[pack], **kwargs)

    def load_data_list(self):
        return [dict(value=float(i)) for i in range(self.size)]


class ToyModel(BaseModel):

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))

    def forward(self, inputs, data_samples=None, task=None, mode='loss'):
        assert len(set(task)) == 1
        return dict(loss=(self.weight * torch.stack(inputs)).pow(2).mean())


class Recorder(Hook):
    """Records (iteration, task, local sample indices) of every trained batch."""

    def __init__(self):
        self.batches = []

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        assert batch_idx == runner.iter
        self.batches.append(
            (batch_idx, data_batch['task'][0], data_batch['data_samples']))


def train(work_dir, name, max_iters, seed, resume=False, model=None):
    """Train with 2 workers; an epoch of the sampler is 6 iterations."""
    recorder = Recorder()
    runner = Runner(
        model=model or ToyModel(),
        work_dir=str(work_dir),
        experiment_name=name,
        train_dataloader=dict(
            batch_size=None,  # a plain dict needs the key: mmengine pops it
            num_workers=2,
            persistent_workers=True,
            sampler=dict(type='DefaultSampler', shuffle=True),
            batch_sampler=dict(type='mod_squad.TaskBatchSampler',
                               batch_sizes=dict(cls=2, det=1, seg=1),
                               ratios=dict(cls=15, det=10, seg=5)),
            collate_fn=dict(type='pseudo_collate'),
            dataset=dict(type='mod_squad.HeterogeneousDataset',
                         datasets=dict(cls=dict(type=ToyDataset, size=6),
                                       det=dict(type=ToyDataset, size=2),
                                       seg=dict(type=ToyDataset, size=1)))),
        train_cfg=dict(type='mod_squad.TaskIterBasedTrainLoop', max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=STOP, by_epoch=False)),
        custom_hooks=[recorder],
        randomness=dict(seed=seed),
        resume=resume,
        default_scope='mod_squad')
    runner.train()
    assert runner.iter == max_iters
    assert len(runner.train_dataloader) == 6
    # Stop the workers now: in a later garbage collection they take seconds to join.
    runner.train_loop.dataloader_iterator = runner.train_dataloader._iterator = None
    return recorder.batches, runner


def test_resume_continues_the_task_sequence_and_iteration(tmp_path, monkeypatch):
    monkeypatch.setattr(loops, 'time', SimpleNamespace(sleep=lambda seconds: None))
    logs = []
    monkeypatch.setattr(task_train_loop, 'print_log', lambda msg, **_: logs.append(msg))
    reference, runner = train(tmp_path / 'ref', 'ref', MAX_ITERS, seed=7)
    assert [it for it, *_ in reference] == list(range(MAX_ITERS))
    assert len({task for _, task, _ in reference}) == 3
    assert sum(isinstance(h, TaskSamplerStateHook) for h in runner.hooks) == 1
    assert logs == []

    first, _ = train(tmp_path / 'run', 'first', STOP, seed=7)
    assert first == reference[:STOP]
    checkpoint = torch.load(tmp_path / 'run' / f'iter_{STOP}.pth', weights_only=False)
    assert checkpoint['task_sampler'] == dict(seed=7,
                                              ratios=dict(cls=15., det=10., seg=5.),
                                              batch_sizes=dict(cls=2, det=1, seg=1),
                                              iteration=STOP)

    # No seed in the config: the sampler must take the checkpoint's.
    resumed, _ = train(tmp_path / 'run', 'resumed', MAX_ITERS, seed=None, resume=True)
    assert resumed == reference[STOP:]
    assert logs == [
        f'Moved TaskBatchSampler to iteration {STOP} without loading the '
        'trained batches'
    ]


def toy_sampler(seed):
    dataset = HeterogeneousDataset(dict(cls=ToyDataset(6), det=ToyDataset(2)))
    return TaskBatchSampler(SimpleNamespace(dataset=dataset, seed=seed),
                            batch_size=1,
                            ratios=[1, 1])


def fake_runner(iteration, batch_sampler):
    return SimpleNamespace(
        iter=iteration, train_dataloader=SimpleNamespace(batch_sampler=batch_sampler))


def test_hook_saves_the_state_at_the_checkpoint_iteration():
    checkpoint = dict(meta=dict(iter=5))
    TaskSamplerStateHook().before_save_checkpoint(fake_runner(4, toy_sampler(3)),
                                                  checkpoint)
    assert checkpoint['task_sampler'] == dict(seed=3,
                                              ratios=dict(cls=1., det=1.),
                                              batch_sizes=dict(cls=1, det=1),
                                              iteration=5)


def test_hook_restores_on_resume_only():
    checkpoint = dict(meta=dict(iter=5))
    TaskSamplerStateHook().before_save_checkpoint(fake_runner(4, toy_sampler(3)),
                                                  checkpoint)
    hook, sampler = TaskSamplerStateHook(), toy_sampler(9)
    hook.after_load_checkpoint(None, checkpoint)
    hook.before_train(fake_runner(0, sampler))  # ``load_from``: a new run
    assert sampler.state_dict()['seed'] == 9 and sampler.state_dict()['iteration'] == 0
    hook.before_train(fake_runner(5, sampler))
    assert sampler.state_dict()['seed'] == 3 and sampler.state_dict()['iteration'] == 5


def test_hook_warns_when_a_resumed_checkpoint_has_no_sampler_state(monkeypatch):
    logs = []
    monkeypatch.setattr(task_sampler_state_hook, 'print_log',
                        lambda msg, **_: logs.append(msg))
    hook = TaskSamplerStateHook()
    hook.after_load_checkpoint(None, dict(meta=dict(iter=5)))
    hook.before_train(fake_runner(5, toy_sampler(3)))
    assert len(logs) == 1 and 'no task sampler state' in logs[0]


class BranchedToyModel(ToyModel):
    """A toy with multi-task branches, as ModSquadMultiTaskModel.task_names."""

    def __init__(self, task_names):
        super().__init__()
        self.task_names = task_names


def test_tasks_and_branches_must_match(tmp_path):
    with pytest.raises(ValueError,
                       match=r"Tasks \['seg'\] of the training data have no branch"):
        train(tmp_path, 'no_branch', 1, 0, model=BranchedToyModel(('cls', 'det')))
    with pytest.raises(ValueError, match=r"Branches \['depth'\] of the model have no "
                       'training dataset'):
        train(tmp_path, 'no_data', 1, 0,
              model=BranchedToyModel(('cls', 'det', 'seg', 'depth')))
