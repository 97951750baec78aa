"""SafeCheckpointHook: a kill while a checkpoint is written leaves the previous one,
and ``last_checkpoint`` naming it, intact."""
import os

import pytest
import torch
from mmengine.dataset import DefaultSampler
from mmengine.fileio import get_file_backend
from mmengine.model import BaseModel
from mmengine.runner import Runner

from mod_squad.engine import (AtomicLocalBackend, SafeCheckpointHook,
                              find_resumable_checkpoint)


class Killed(BaseException):
    """Stands for the kill: nothing after it runs."""


class RegressionModel(BaseModel):

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, inputs, mode='loss'):
        return dict(loss=self.linear(torch.stack(inputs)).pow(2).mean())


def make_runner(work_dir, max_iters=4, resume=False, load_from=None, **checkpoint):
    return Runner(
        model=RegressionModel(),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=[dict(inputs=torch.ones(2))] * 4,
            sampler=dict(type=DefaultSampler, shuffle=False),
            batch_size=2,
            num_workers=0),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        default_hooks=dict(checkpoint=dict(
            type=SafeCheckpointHook, interval=2, by_epoch=False, **checkpoint)),
        resume=resume,
        load_from=load_from,
        experiment_name=f'{max_iters}_{resume}')


def test_a_kill_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    make_runner(tmp_path, max_iters=2, max_keep_ckpts=1).train()
    previous = tmp_path / 'iter_2.pth'
    assert (tmp_path / 'last_checkpoint').read_text() == str(previous)

    written = []

    def killed_while_writing(self, obj, filepath):
        with open(f'{filepath}.part', 'wb') as f:
            f.write(obj[:len(obj) // 2])
        written.append(filepath)
        raise Killed

    monkeypatch.setattr(AtomicLocalBackend, 'put', killed_while_writing)
    with pytest.raises(Killed):
        make_runner(tmp_path, max_keep_ckpts=1, resume=True).train()
    assert written == [str(tmp_path / 'iter_4.pth')]
    assert not (tmp_path / 'iter_4.pth').exists()
    assert (tmp_path / 'iter_4.pth.part').exists() and previous.exists()
    assert (tmp_path / 'last_checkpoint').read_text() == str(previous)
    assert find_resumable_checkpoint(str(tmp_path)) == str(previous)
    assert torch.load(previous, weights_only=False)['meta']['iter'] == 2

    monkeypatch.undo()
    runner = make_runner(tmp_path, max_keep_ckpts=1, resume=True,
                         load_from=str(previous))
    runner.train()
    assert runner.iter == 4 and not (tmp_path / 'iter_4.pth.part').exists()
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['iter_4.pth']


def test_old_checkpoints_are_deleted_after_the_new_one_is_complete(tmp_path,
                                                                   monkeypatch):
    files_when_written = []
    put = AtomicLocalBackend.put

    def recording_put(self, obj, filepath):
        put(self, obj, filepath)
        files_when_written.append(sorted(p.name for p in tmp_path.glob('*.pth')))

    monkeypatch.setattr(AtomicLocalBackend, 'put', recording_put)
    runner = make_runner(tmp_path, max_iters=6, max_keep_ckpts=1)
    runner.train()
    assert files_when_written == [['iter_2.pth'], ['iter_2.pth', 'iter_4.pth'],
                                  ['iter_4.pth', 'iter_6.pth']]
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['iter_6.pth']
    assert runner.message_hub.get_info('keep_ckpt_ids') == [6]
    assert not list(tmp_path.glob('*.part'))


def test_other_backends_are_left_as_configured(tmp_path):
    runner = make_runner(tmp_path, max_iters=2, backend_args=dict(backend='local'))
    runner.train()
    hook = next(h for h in runner.hooks if isinstance(h, SafeCheckpointHook))
    assert hook.backend_args == dict(backend='local')
    assert type(hook.file_backend) is type(get_file_backend(str(tmp_path)))
    assert (tmp_path / 'iter_2.pth').exists()


def test_atomic_backend_replaces_whole_files(tmp_path):
    target = tmp_path / 'sub' / 'last_checkpoint'
    backend = get_file_backend(backend_args=dict(backend='mod_squad_atomic_local'))
    assert isinstance(backend, AtomicLocalBackend)
    backend.put_text('first', target)
    backend.put(b'second', target)
    assert target.read_text() == 'second'
    assert os.listdir(target.parent) == ['last_checkpoint']
