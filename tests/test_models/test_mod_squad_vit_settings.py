"""ModSquadViT options for the authors' settings: MoA head width, router config, task
embedding, and the preset of the authors' ViT-B."""
import pytest
import torch

from mod_squad.models import ModSquadViT
from mod_squad.moe import RoutedLayer

TINY = dict(embed_dims=64, num_layers=4, num_heads=2, feedforward_channels=256)


def make_vit(**kwargs):
    kwargs.setdefault('arch', TINY)
    kwargs.setdefault('img_size', 32)
    kwargs.setdefault('task_names', ('cls', 'det'))
    return ModSquadViT(**kwargs)


def routed_layers(model):
    return [m for m in model.modules() if isinstance(m, RoutedLayer)]


def test_router_cfg_is_built_once_and_shared_by_every_routed_layer():
    model = make_vit(router_cfg=dict(bias=False, init='trunc_normal', impl='loop',
                                     aux_loss=dict(mi_weight=0.01)))
    layers = routed_layers(model)
    assert len(layers) == 4  # MoA on blocks 0, 2; MoE MLP on 1, 3
    assert all(layer.router_cfg is model.router_cfg for layer in layers)
    assert all(layer.aux_loss.cfg is model.router_cfg.aux_loss for layer in layers)
    names = [n for n, _ in model.named_parameters() if '.router.' in n]
    assert names and not any('.router.bias.' in n for n in names)
    assert all(p.std() > 0.01 for n, p in model.named_parameters() if '.router.' in n)


def test_attn_head_dims_widens_the_head_experts():
    default = make_vit()
    assert default.layers[0].attn.head_dims == 32  # C / heads
    model = make_vit(attn_head_dims=64)
    attn = model.layers[0].attn
    assert attn.head_dims == 64
    assert attn.q_proj.shape == (4, 64, 64) and attn.o_proj.shape == (4, 64, 64)
    assert attn.kv_proj.weight.shape == (128, 64)
    model.eval()
    assert model(torch.randn(2, 3, 32, 32), 'det')[0].shape == (2, 64)


def test_a_shared_task_embedding_is_added_before_every_block():
    shared = make_vit(moe_layers='none', task_embed=dict(per_block=False)).eval()
    assert {t: tuple(e.shape) for t, e in shared.task_embed.items()} == {
        'cls': (64, ), 'det': (64, )}
    per_block = make_vit(moe_layers='none').eval()
    per_block.load_state_dict(
        {k: v for k, v in shared.state_dict().items() if 'task_embed' not in k},
        strict=False)
    with torch.no_grad():
        for task in ('cls', 'det'):
            shared.task_embed[task].normal_()
            per_block.task_embed[task].copy_(shared.task_embed[task].expand(4, 64))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(shared(x, 'det')[0], per_block(x, 'det')[0])
    assert not torch.allclose(shared(x, 'det')[0], shared(x, 'cls')[0])


def test_task_embedding_initialisation_and_errors():
    torch.manual_seed(0)
    wide = dict(embed_dims=768, num_layers=1, num_heads=12, feedforward_channels=768)
    model = make_vit(arch=wide, task_embed=dict(per_block=False, init_std=1.))
    embed = model.task_embed['cls']
    assert embed.shape == (768, ) and abs(embed.std().item() - 1) < 0.1
    assert not make_vit().task_embed['cls'].any()  # default: zeros, per block
    assert make_vit(task_embed=False).task_embed is None
    with pytest.raises(ValueError, match=r"Unknown task_embed keys \['std'\]; valid "
                       r"keys are \['init_std', 'per_block'\]"):
        make_vit(task_embed=dict(std=1.))


def test_unknown_router_setting_names_the_key():
    with pytest.raises(ValueError, match=r"Unknown router_cfg keys \['zero_init'\]"):
        make_vit(router_cfg=dict(zero_init=False))


def test_authors_vit_b_preset():
    """The preset's settings on 2 blocks of ViT-B width (12 make the test slow)."""
    preset = ModSquadViT.presets['mod-squad-b']
    assert preset['arch'] == 'base' and ModSquadViT.arch_zoo['base'] == dict(
        embed_dims=768, num_layers=12, num_heads=12, feedforward_channels=3072)
    torch.manual_seed(0)
    model = ModSquadViT(**dict(preset, arch=dict(ModSquadViT.arch_zoo['base'],
                                                 num_layers=2)),
                        task_names=('cls', 'det', 'seg'))
    moa, mlp = model.layers[0].attn, model.layers[1].ffn
    assert (moa.num_experts, moa.top_k, moa.head_dims) == (24, 12, 128)
    assert moa.kv_proj.weight.shape == (256, 768)
    assert (mlp.num_experts, mlp.top_k) == (16, 4)
    assert mlp.experts.w1.shape == (16, 768, 768)
    assert [layer.is_moa for layer in model.layers] == [True, False]
    assert [layer.is_moe_mlp for layer in model.layers] == [False, True]
    cfg = model.router_cfg
    assert (cfg.hidden, cfg.noisy_gating, cfg.renormalize, cfg.init, cfg.bias,
            cfg.eps) == (None, False, False, 'trunc_normal', False, 1e-4)
    assert (cfg.aux_loss.mi_form, cfg.aux_loss.mi_weight, cfg.aux_loss.switch_weight,
            cfg.aux_loss.z_weight, cfg.aux_loss.eps) == ('batch', 0.005, 0., 0., 1e-4)
    assert not any('router.bias' in n for n, _ in model.named_parameters())
    assert {t: tuple(e.shape) for t, e in model.task_embed.items()} == {
        t: (768, ) for t in ('cls', 'det', 'seg')}
    assert abs(model.task_embed['cls'].std().item() - 1) < 0.1
