"""ExpertUsageHook: per-task usage logged at intervals and kept in checkpoints."""
import math
from types import SimpleNamespace

import pytest
import torch
from mmengine.logging import MessageHub, MMLogger

from mod_squad.engine.expert_usage_hook import ExpertUsageHook
from mod_squad.models import ModSquadViT


def make_runner(model, iteration):
    return SimpleNamespace(
        model=model, iter=iteration,
        message_hub=MessageHub.get_instance('test_expert_usage_hook'),
        logger=MMLogger.get_instance('test_expert_usage_hook'))


def test_usage_logged_per_task_and_saved_with_checkpoints():
    model = ModSquadViT(
        arch=dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64),
        task_names=('a', 'b'), img_size=32, num_experts=4, top_k=1,
        moe_layers='mlp')
    router = model.layers[0].ffn.router
    with torch.no_grad():  # task 'a' always picks expert 2, 'b' spreads
        router.weight['a'].zero_()
        router.bias['a'].zero_()
        router.bias['a'][2] = 10.
        router.weight['b'].normal_(std=5.)
    hook = ExpertUsageHook(interval=2)
    hook.before_train(make_runner(model, 0))
    x = torch.randn(2, 3, 32, 32)
    model(x, task='a')
    hook.after_train_iter(make_runner(model, 0), 0)  # not at the interval
    assert not hook.total
    model(x, task='b')
    runner = make_runner(model, 1)
    hook.after_train_iter(runner, 1)

    tokens = 2 * (1 + 4)  # images x (cls + 2x2 patches)
    layer0 = hook.total['layers.0.ffn']
    assert layer0.shape == (2, 4)
    assert layer0.sum(-1).tolist() == [tokens, tokens]
    assert layer0[0, 2] == tokens
    # 'a' sends every token to one expert in both layers (layer 1's zero router
    # breaks the tie the same way for every token), 'b' spreads in layer 0.
    hub = runner.message_hub
    assert hub.get_scalar('train/moe/a/entropy').current() == pytest.approx(0.)
    assert 0 < hub.get_scalar('train/moe/b/entropy').current() < math.log(4)
    assert hub.get_scalar('train/moe/a/experts_used').current() == 0.25
    assert 0.25 < hub.get_scalar('train/moe/b/experts_used').current() <= 1.0
    # the interval's counts were consumed
    assert all(u.counts.sum() == 0 for n, u in model.named_modules()
               if n.endswith('usage'))

    checkpoint = {}
    hook.before_save_checkpoint(runner, checkpoint)
    restored = ExpertUsageHook()
    restored.after_load_checkpoint(runner, checkpoint)
    torch.testing.assert_close(restored.total['layers.0.ffn'], layer0)


def forced_model():
    """Two MoE MLP blocks, 4 experts top-1; task 'a' sends every token to expert 2
    in layer 0 and to expert 0 in layer 1 (zero router: ties to the lower index)."""
    model = ModSquadViT(
        arch=dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64),
        task_names=('a', 'b'), img_size=32, num_experts=4, top_k=1,
        moe_layers='mlp')
    with torch.no_grad():
        router = model.layers[0].ffn.router
        router.weight['a'].zero_()
        router.bias['a'][2] = 10.
    return model


def test_running_share_logged_kept_across_intervals_and_restored_on_resume():
    model = forced_model()
    hook = ExpertUsageHook(interval=1, statistic='running_share', momentum=0.5)
    runner = make_runner(model, 0)
    hook.before_train(runner)
    assert all(m.usage.momentum == 0.5 for m in (model.layers[0].ffn,
                                                  model.layers[1].ffn))
    x = torch.randn(2, 3, 32, 32)
    model(x, task='a')  # a training forward (grad on)
    hook.after_train_iter(runner, 0)
    running = model.layers[0].ffn.usage.running_share
    assert running[0].tolist() == [0., 0., 0.5, 0.]  # (1 - momentum) x share
    assert running[1].eq(0).all()
    assert runner.message_hub.get_scalar(
        'train/moe/a/entropy').current() == pytest.approx(0.)
    with torch.no_grad():  # e.g. validation: counts only
        model(x, task='b')
    model(x, task='a')
    hook.after_train_iter(make_runner(model, 1), 1)
    assert running[0].tolist() == [0., 0., 0.75, 0.]  # not reset at the interval
    assert model.layers[0].ffn.usage.counts.sum() == 0  # the interval's counts are

    checkpoint = {}
    hook.before_save_checkpoint(runner, checkpoint)
    saved = checkpoint['expert_usage_running']
    assert saved['layers.0.ffn'][0].tolist() == [0., 0., 0.75, 0.]
    resumed_model = forced_model()
    resumed = ExpertUsageHook(statistic='running_share')
    resumed.after_load_checkpoint(runner, checkpoint)
    resumed.before_train(make_runner(resumed_model, 2))
    for name in ('layers.0.ffn', 'layers.1.ffn'):
        usage = dict(resumed_model.named_modules())[name].usage
        assert torch.equal(usage.running_share, saved[name])
        assert usage.momentum == 0.95

    # another set of tasks or experts (a model grown by a new task): warned, fresh
    checkpoint['expert_usage_running']['layers.1.ffn'] = torch.ones(2, 5)
    resumed.after_load_checkpoint(runner, checkpoint)
    grown = forced_model()
    resumed.before_train(make_runner(grown, 2))
    assert torch.equal(grown.layers[0].ffn.usage.running_share, saved['layers.0.ffn'])
    assert grown.layers[1].ffn.usage.running_share.sum() == 0


def test_invalid_options():
    with pytest.raises(ValueError, match='statistic'):
        ExpertUsageHook(statistic='mass')
    with pytest.raises(ValueError, match='momentum'):
        ExpertUsageHook(momentum=1.)
