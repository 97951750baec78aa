"""Expert usage statistics: counts equal the routed tokens; the running share is the
authors' moving average; readers; reduce; reset."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

from mod_squad.moe import (ExpertUsage, MoAttention, MoEMLP, RouterConfig,
                           all_reduce_expert_usage, experts_to_cover,
                           expert_usage_modules, num_experts_used, reset_expert_usage,
                           stack_expert_usage, usage_entropy, usage_share)

TASKS = ('cls', 'det', 'seg')


class Model(nn.Module):

    def __init__(self):
        super().__init__()
        cfg = RouterConfig(init='trunc_normal')
        self.attn = MoAttention(16, 6, 2, 8, TASKS, router_cfg=cfg)
        self.mlp = MoEMLP(16, 4, 2, 8, TASKS, router_cfg=cfg)

    def forward(self, x, task):
        return self.mlp(self.attn(x, task), task)


def test_counts_equal_the_routed_tokens():
    layer = MoEMLP(16, 5, 2, 8, TASKS, router_cfg=RouterConfig(init='trunc_normal'))
    x1, x2 = torch.randn(3, 4, 16), torch.randn(7, 16)
    layer.eval()  # statistics are kept in evaluation too
    layer(x1, 'det')
    layer(x2, 'det')
    layer(x2, 'seg')
    for task, xs in (('det', (x1, x2)), ('seg', (x2, ))):
        routes = [layer.router(x.reshape(-1, 16), task) for x in xs]
        indices = torch.cat([r.indices.flatten() for r in routes])
        t = TASKS.index(task)
        assert torch.equal(layer.usage.counts[t], torch.bincount(indices, minlength=5))
        mass = sum(r.probs.sum(0) for r in routes).double()
        torch.testing.assert_close(layer.usage.prob_mass[t], mass)
    assert layer.usage.tokens.tolist() == [0, 19, 7]
    assert layer.usage.counts[0].sum() == 0
    assert 'usage.counts' not in layer.state_dict()  # not saved in checkpoints


def test_stack_pads_layers_and_reset_clears():
    model = Model()
    model(torch.randn(2, 5, 16), 'seg')
    assert list(expert_usage_modules(model)) == ['attn', 'mlp']
    names, counts = stack_expert_usage(model)
    assert names == ['attn', 'mlp'] and counts.shape == (2, 3, 6)
    assert counts[1, :, 4:].eq(0).all()  # MLP has 4 experts: padded
    assert counts[:, 2].sum(-1).tolist() == [20, 20]  # 10 tokens x top-2
    _, mass = stack_expert_usage(model, 'prob_mass')
    torch.testing.assert_close(mass[:, 2].sum(-1), torch.full((2, ), 10.).double())
    _, running = stack_expert_usage(model, 'running_share')
    assert running.shape == (2, 3, 6) and running[:, 2].sum(-1).gt(0).all()
    with pytest.raises(ValueError):
        stack_expert_usage(model, 'tokens')
    reset_expert_usage(model, running=False)  # keeps the running share
    assert stack_expert_usage(model)[1].eq(0).all()
    assert torch.equal(stack_expert_usage(model, 'running_share')[1], running)
    reset_expert_usage(model)
    assert stack_expert_usage(model, 'running_share')[1].eq(0).all()


def test_all_reduce_in_a_single_process_group(tmp_path):
    model = Model()
    model(torch.randn(1, 4, 16), 'cls')
    before = {f: stack_expert_usage(model, f)[1].clone()
              for f in ('counts', 'running_share')}
    all_reduce_expert_usage(model)  # not initialised: no-op
    dist.init_process_group(
        'gloo', init_method=f'file://{tmp_path}/store', rank=0, world_size=1)
    try:
        all_reduce_expert_usage(model)
    finally:
        dist.destroy_process_group()
    # counts summed, the running share averaged: unchanged over one rank
    for field, value in before.items():
        assert torch.equal(stack_expert_usage(model, field)[1], value)


def test_running_share_is_the_moving_average_of_training_forwards():
    usage = ExpertUsage(num_tasks=2, num_experts=4)
    assert usage.momentum == 0.95  # the authors'
    route = SimpleNamespace(probs=torch.full((5, 4), 0.25))
    first, second = torch.tensor([4, 4, 2, 0]), torch.tensor([0, 5, 5, 0])
    usage.update(1, route, first)
    usage.update(1, route, second)
    expected = 0.95 * 0.05 * first / 10 + 0.05 * second / 10
    torch.testing.assert_close(usage.running_share[1], expected.double())
    assert usage.running_share[0].eq(0).all()  # only the forward's task moves
    # read as a share, the start from 0 does not matter
    torch.testing.assert_close(usage_share(usage.running_share[1]),
                               (expected / expected.sum()).double())
    with torch.no_grad():  # validation / test: cumulative counts only
        usage.update(1, route, second)
    torch.testing.assert_close(usage.running_share[1], expected.double())
    assert usage.counts[1].tolist() == [4, 14, 12, 0]
    with pytest.raises(ValueError, match='momentum'):
        ExpertUsage(2, 4, momentum=1.)


def test_layer_updates_the_running_share_in_training_steps_only():
    layer = MoEMLP(16, 4, 1, 8, TASKS, router_cfg=RouterConfig(init='trunc_normal'))
    x = torch.randn(6, 16)
    layer(x, 'det')
    share = layer.usage.counts[1].double() / 6
    torch.testing.assert_close(layer.usage.running_share[1], 0.05 * share)
    with torch.no_grad():
        layer(x, 'det')
    torch.testing.assert_close(layer.usage.running_share[1], 0.05 * share)


def test_experts_to_cover():
    stat = torch.tensor([[50., 40., 10., 0.], [25., 25., 25., 25.], [0., 0., 0., 0.],
                         [0., 0., 0., 7.]])
    assert experts_to_cover(stat, 0.9).tolist() == [2, 4, 0, 1]
    assert experts_to_cover(stat, 0.5).tolist() == [1, 2, 0, 1]
    assert experts_to_cover(stat, 1.).tolist() == [3, 4, 0, 1]
    with pytest.raises(ValueError, match='mass'):
        experts_to_cover(stat, 0.)


def test_share_entropy_and_experts_used():
    counts = torch.tensor([[[5, 5, 5, 5], [20, 0, 0, 0], [0, 0, 0, 0]]])
    share = usage_share(counts)
    torch.testing.assert_close(share[0, 0], torch.full((4, ), 0.25).double())
    assert share[0, 2].eq(0).all()
    entropy = usage_entropy(counts)
    assert entropy.shape == (1, 3)
    assert entropy[0].tolist() == pytest.approx([math.log(4), 0., 0.])
    assert num_experts_used(counts, 0.1).tolist() == [[4, 1, 0]]
