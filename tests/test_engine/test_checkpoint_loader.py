"""Save and resume mmengine checkpoints under torch >= 2.6 (weights_only default)."""
import copy

import pytest
import torch
import torch.nn as nn
from mmengine.dataset import DefaultSampler
from mmengine.model import BaseModel
from mmengine.runner import Runner

import mod_squad  # noqa: F401  (installs the checkpoint loader)


class RegressionModel(BaseModel):

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 1)

    def forward(self, inputs, targets, mode='loss'):
        inputs = torch.stack(inputs)
        targets = torch.stack(targets)
        return dict(loss=((self.linear(inputs) - targets)**2).mean())


class RegressionDataset(torch.utils.data.Dataset):

    def __init__(self, size=64):
        generator = torch.Generator().manual_seed(0)
        self.inputs = torch.randn(size, 4, generator=generator)
        self.targets = self.inputs.sum(1, keepdim=True)

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, index):
        return dict(inputs=self.inputs[index], targets=self.targets[index])


def make_runner(work_dir, max_iters, resume=False):
    return Runner(
        model=RegressionModel(),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=RegressionDataset(),
            sampler=dict(type=DefaultSampler, shuffle=True),
            batch_size=8,
            num_workers=0),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=0.05)),
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=4, by_epoch=False),
            logger=dict(type='LoggerHook', interval=1)),
        randomness=dict(seed=0),
        resume=resume,
        default_scope='mmengine',
        experiment_name=f'resume_{max_iters}_{resume}')


def test_plain_torch_load_rejects_mmengine_checkpoints(tmp_path):
    """Documents why the loader exists: torch's default refuses the training state."""
    runner = make_runner(tmp_path, max_iters=4)
    runner.train()
    with pytest.raises(Exception, match='weights_only|Weights only'):
        torch.load(tmp_path / 'iter_4.pth')


def test_resume_continues_iterations_and_optimizer_state(tmp_path):
    reference = make_runner(tmp_path / 'reference', max_iters=8)
    reference.train()

    interrupted = make_runner(tmp_path / 'resumed', max_iters=4)
    interrupted.train()
    saved_state = copy.deepcopy(interrupted.optim_wrapper.state_dict())

    resumed = make_runner(tmp_path / 'resumed', max_iters=8, resume=True)
    resumed._train_loop = resumed.build_train_loop(resumed._train_loop)
    resumed.load_or_resume()
    assert resumed.iter == 4
    state = resumed.optim_wrapper.state_dict()['state']
    for key, value in saved_state['state'][0].items():
        torch.testing.assert_close(state[0][key], value)

    resumed.train()
    assert resumed.iter == 8
    torch.testing.assert_close(
        resumed.model.linear.weight, reference.model.linear.weight)
