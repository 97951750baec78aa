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
