"""MoEAuxLossScheduleHook ramps the configured auxiliary-loss weights."""
from types import SimpleNamespace

import pytest

from mod_squad.engine.moe_aux_loss_schedule_hook import MoEAuxLossScheduleHook
from mod_squad.models import ModSquadViT
from mod_squad.moe import RouterAuxLoss


def test_weights_ramp_linearly_between_begin_and_end():
    model = ModSquadViT(
        arch=dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64),
        task_names=('a', 'b'), img_size=32, num_experts=4, top_k=2,
        router_cfg=dict(aux_loss=dict(mi_weight=0.01, z_weight=0.001)))
    hook = MoEAuxLossScheduleHook(begin=10, end=20, start_factor=0.)
    hook.before_train(SimpleNamespace(model=model))
    configs = [m.cfg for m in model.modules() if isinstance(m, RouterAuxLoss)]
    assert len(configs) == 2
    for iteration, factor in [(0, 0.), (10, 0.), (15, 0.5), (20, 1.), (99, 1.)]:
        hook.before_train_iter(SimpleNamespace(iter=iteration), 0)
        for cfg in configs:
            assert cfg.mi_weight == pytest.approx(0.01 * factor)
            assert cfg.z_weight == pytest.approx(0.001 * factor)
            assert cfg.switch_weight == 0.
    with pytest.raises(ValueError, match='end'):
        MoEAuxLossScheduleHook(begin=5, end=5)
