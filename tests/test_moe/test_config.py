"""RouterConfig: built once from a config dict, shared by every routed layer."""
import pytest
import torch

from mod_squad.moe import MoAttention, MoEAuxLossConfig, MoEMLP, RouterConfig

TASKS = ('cls', 'det')


def test_build_from_none_a_dict_or_an_instance():
    assert RouterConfig.build(None) == RouterConfig()
    cfg = RouterConfig.build(
        dict(hidden=32, init='trunc_normal', bias=False, eps=0.,
             aux_loss=dict(mi_weight=0.005, mi_form='batch'), impl='loop'))
    assert (cfg.hidden, cfg.init, cfg.bias, cfg.eps, cfg.impl) == (
        32, 'trunc_normal', False, 0., 'loop')
    assert cfg.aux_loss == MoEAuxLossConfig(mi_weight=0.005, mi_form='batch')
    assert RouterConfig.build(cfg) is cfg


def test_defaults_are_documented_values():
    cfg = RouterConfig()
    assert (cfg.hidden, cfg.noisy_gating, cfg.renormalize, cfg.init, cfg.bias, cfg.eps,
            cfg.impl) == (None, False, False, 'zeros', True, 1e-4, 'auto')
    assert cfg.aux_loss == MoEAuxLossConfig() and not cfg.aux_loss.enabled
    assert cfg.aux_loss.eps == 1e-4


@pytest.mark.parametrize('cfg,error,message', [
    (dict(zero_init_router=False), ValueError,
     r"Unknown router_cfg keys \['zero_init_router'\]; valid keys are \['hidden', "),
    (dict(aux_loss=dict(weight=1.)), ValueError,
     r"Unknown router_cfg.aux_loss keys \['weight'\]; valid keys are \['mi_weight', "),
    (dict(init='normal'), ValueError,
     r"init must be one of \('zeros', 'trunc_normal'\), got 'normal'"),
    (dict(impl='bmm'), ValueError,
     r"impl must be one of \('auto', 'loop', 'fused', 'grouped_mm'\), got 'bmm'"),
    (dict(hidden=0), ValueError, 'hidden must be a positive width or None, got 0'),
    (dict(eps=-1e-4), ValueError, 'eps must be >= 0, got -0.0001'),
    (dict(aux_loss=None), TypeError,
     'aux_loss must be a MoEAuxLossConfig or a dict of its fields, got None'),
])
def test_invalid_settings_are_named(cfg, error, message):
    with pytest.raises(error, match=message):
        RouterConfig.build(cfg)


def test_one_config_reaches_both_layer_kinds_and_their_routers():
    cfg = RouterConfig(aux_loss=dict(z_weight=0.1))
    mlp = MoEMLP(16, 4, 2, 8, TASKS, router_cfg=cfg)
    attn = MoAttention(16, 4, 2, 8, TASKS, router_cfg=cfg)
    for layer in (mlp, attn):
        assert layer.router_cfg is cfg and layer.router.cfg is cfg
        assert layer.aux_loss.cfg is cfg.aux_loss
    # ``impl`` is read from the one config at every forward, by both layer kinds
    x = torch.randn(1, 3, 16)
    cfg.impl = 'no-such-path'
    for layer in (mlp, attn):
        with pytest.raises(ValueError, match="impl must be one of .* 'no-such-path'"):
            layer(x, 'cls')
    cfg.impl = 'loop'
    assert mlp(x, 'cls').shape == attn(x, 'det').shape == (1, 3, 16)
