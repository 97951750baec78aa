"""ModSquadViT: outputs, layouts, task routing, checkpointing, windows, upcycling."""
import pytest
import torch
from mmpretrain.models import VisionTransformer

from mod_squad.models import ModSquadViT
from mod_squad.models.backbones.mod_squad_block import (window_partition,
                                                        window_unpartition)
from mod_squad.moe import MoAttention, MoEMLP

TINY = dict(embed_dims=64, num_layers=4, num_heads=2, feedforward_channels=256)


def make_vit(**kwargs):
    kwargs.setdefault('arch', TINY)
    kwargs.setdefault('img_size', 64)
    model = ModSquadViT(**kwargs)
    model.init_weights()
    return model


def randomise_routers(model):
    for name, param in model.named_parameters():
        if 'router' in name or 'task_embed' in name:
            torch.nn.init.normal_(param, std=0.5)


@pytest.mark.parametrize('out_type,size,expected', [
    ('cls_token', (64, 64), [(2, 64)]),
    ('avg_featmap', (64, 64), [(2, 64)]),
    ('raw', (64, 64), [(2, 17, 64)]),
    ('featmap', (96, 128), [(2, 64, 6, 8)]),
])
def test_output_types_and_any_input_size(out_type, size, expected):
    model = make_vit(out_type=out_type)
    outs = model(torch.randn(2, 3, *size))
    assert [tuple(o.shape) for o in outs] == expected


def test_pyramid_from_one_map_and_from_four_maps():
    one = make_vit(out_type='pyramid', with_cls_token=False, out_indices=-1)
    outs = one(torch.randn(1, 3, 128, 96))
    assert [tuple(o.shape[-2:]) for o in outs] == [(32, 24), (16, 12), (8, 6), (4, 3)]
    four = make_vit(out_type='pyramid', with_cls_token=False, out_indices=(0, 1, 2, 3))
    assert len(four(torch.randn(1, 3, 64, 64))) == 4


def test_presets_follow_mod_squad_defaults():
    model = ModSquadViT(arch='base', task_names=('cls', 'det', 'seg'))
    assert isinstance(model.layers[0].attn, MoAttention)
    assert isinstance(model.layers[1].ffn, MoEMLP)
    assert not model.layers[0].is_moe_mlp and not model.layers[1].is_moa
    moa, mlp = model.layers[0].attn, model.layers[1].ffn
    assert (moa.num_experts, moa.top_k, moa.head_dims) == (24, 12, 64)
    assert (mlp.num_experts, mlp.top_k) == (16, 4)
    assert mlp.experts.w1.shape == (16, 768, 768)
    assert {t: tuple(e.shape) for t, e in model.task_embed.items()} == {
        t: (12, 768) for t in ('cls', 'det', 'seg')}
    assert all(not p.any() for n, p in model.named_parameters() if 'router' in n)


def test_moe_layer_layouts():
    assert all(layer.is_moe_mlp and not layer.is_moa
               for layer in make_vit(moe_layers='mlp').layers)
    custom = make_vit(moe_layers=dict(moa=[1], mlp=[1, -1]))
    assert [(layer.is_moa, layer.is_moe_mlp) for layer in custom.layers] == [
        (False, False), (True, True), (False, False), (False, True)]
    with pytest.raises(ValueError, match='moe_layers'):
        make_vit(moe_layers='every')
    with pytest.raises(ValueError, match="Unknown arch 'huge'"):
        ModSquadViT(arch='huge')


def test_task_selection_routes_with_that_tasks_router():
    model = make_vit(task_names=('cls', 'det'), out_type='avg_featmap')
    randomise_routers(model)
    x = torch.randn(2, 3, 64, 64)
    model(x, task="det")[0].square().sum().backward()
    router = model.layers[1].ffn.router
    for name, param in router.named_parameters():
        if name.endswith('.cls'):
            assert param.grad is None, name
        else:
            assert param.grad.abs().sum() > 0, name
    assert model.task_embed['cls'].grad is None
    assert model.task_embed['det'].grad.abs().sum() > 0
    model.set_task('cls')
    assert model.task == 'cls'
    with torch.no_grad():
        assert not torch.allclose(model(x)[0], model(x, task='det')[0])
        torch.testing.assert_close(model(x)[0], model(x, task='cls')[0])
    with pytest.raises(ValueError, match=r"Unknown task 'seg'.*\['cls', 'det'\]"):
        model(x, task='seg')
    with pytest.raises(ValueError, match='Unknown task'):
        model.set_task('seg')


def test_single_task_default():
    model = make_vit()
    assert model.task_names == ('default', ) and model.task == 'default'


def test_activation_checkpointing_matches_plain_forward():
    torch.manual_seed(0)
    plain = make_vit(task_names=('a', 'b'), drop_path_rate=0.)
    randomise_routers(plain)
    ckpt = make_vit(task_names=('a', 'b'), with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    outs = [m(x, task='b')[0] for m in (plain, ckpt)]
    torch.testing.assert_close(outs[0], outs[1])
    for out in outs:
        out.square().sum().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    usage = [m.layers[1].ffn.usage for m in (plain, ckpt)]
    torch.testing.assert_close(usage[0].counts, usage[1].counts)


def test_window_partition_round_trip_with_padding():
    x = torch.randn(2, 5 * 7, 8)
    windows, padded = window_partition(x, (5, 7), 3)
    assert windows.shape == (2 * 2 * 3, 9, 8) and padded == (6, 9)
    torch.testing.assert_close(window_unpartition(windows, (5, 7), padded, 3), x)


def test_window_covering_the_grid_equals_global_attention():
    glob = make_vit(with_cls_token=False, out_type='featmap')
    windowed = make_vit(with_cls_token=False, out_type='featmap', window_size=4)
    windowed.load_state_dict(glob.state_dict())
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(glob(x)[0], windowed(x)[0])
    smaller = make_vit(with_cls_token=False, out_type='featmap', window_size=2)
    smaller.load_state_dict(glob.state_dict())
    assert not torch.allclose(glob(x)[0], smaller(x)[0])
    with pytest.raises(ValueError, match='with_cls_token=False'):
        make_vit(window_size=2)


def dense_vit():
    torch.manual_seed(0)
    vit = VisionTransformer(
        arch=TINY, img_size=64, patch_size=16, out_type='cls_token')
    vit.init_weights()
    for p in vit.parameters():  # make every tensor informative (LN, biases)
        torch.nn.init.normal_(p, std=0.05)
    vit.eval()  # mmpretrain backbones' train() does not return the module
    return vit


def test_dense_checkpoint_loads_exactly_without_experts():
    vit = dense_vit()
    model = make_vit(moe_layers='none', task_embed=False).eval()
    model.load_pretrained(dict(state_dict=vit.state_dict()))
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model(x)[0], vit(x)[0])


def test_upcycled_copies_of_the_dense_mlp_reproduce_it():
    """Experts as wide as the dense MLP are copies; with gates renormalised to sum
    to one the mixture equals the dense MLP, whatever the router picks."""
    vit = dense_vit()
    model = make_vit(moe_layers='mlp', task_embed=False, expert_hidden=256,
                     router_cfg=dict(renormalize=True)).eval()
    randomise_routers(model)
    model.load_pretrained(vit.state_dict())
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model(x)[0], vit(x)[0])


def test_upcycling_slices_hidden_units_and_heads():
    vit = dense_vit()
    model = make_vit(num_experts=8, top_k=4)  # experts of 64 = 256 / 4 hidden units
    model.load_pretrained(vit.state_dict())
    dense = vit.state_dict()
    w1 = model.layers[1].ffn.experts.w1  # (E, C, H)
    fc1 = dense['layers.1.ffn.layers.0.0.weight']  # (F, C)
    torch.testing.assert_close(w1[1], fc1[64:128].t())
    torch.testing.assert_close(w1[5], fc1[64:128].t())  # wraps round
    q_proj = model.layers[0].attn.q_proj  # (E=4, C, hd=32), 2 dense heads
    qkv = dense['layers.0.attn.qkv.weight']
    torch.testing.assert_close(q_proj[3], qkv[32:64].t())
    k_mean = qkv[64:128].view(2, 32, 64).mean(0)
    torch.testing.assert_close(model.layers[0].attn.kv_proj.weight[:32], k_mean)
    torch.testing.assert_close(model.layers[2].ln1.weight, dense['layers.2.ln1.weight'])
    assert not any(w.any() for w in model.layers[1].ffn.router.weight.values())  # fresh


def timm_keys(state_dict):
    """mmpretrain ViT keys -> timm/DeiT keys (the inverse of our converter)."""
    renames = [('patch_embed.projection.', 'patch_embed.proj.'), ('.ln1.', '.norm1.'),
               ('.ln2.', '.norm2.'), ('.ffn.layers.0.0.', '.mlp.fc1.'),
               ('.ffn.layers.1.', '.mlp.fc2.'), ('layers.', 'blocks.')]
    out = {}
    for key, value in state_dict.items():
        for old, new in renames:
            key = key.replace(old, new)
        out['norm.' + key[4:] if key.startswith('ln1.') else key] = value
    return out


def test_timm_and_mae_checkpoints_convert_like_mmpretrain():
    vit = dense_vit()
    checkpoint = dict(model=timm_keys(vit.state_dict()))
    checkpoint['model']['decoder_embed.weight'] = torch.zeros(1)  # MAE decoder
    from_timm = make_vit(moe_layers='none', task_embed=False).eval()
    from_timm.load_pretrained(checkpoint)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(from_timm(x)[0], vit(x)[0])


def test_moe_checkpoint_round_trip_and_expert_count_errors(tmp_path):
    source = make_vit(task_names=('cls', 'det'), num_experts=4, top_k=2)
    randomise_routers(source)
    path = str(tmp_path / 'moe.pth')
    torch.save(dict(state_dict={f'backbone.{k}': v
                                for k, v in source.state_dict().items()}), path)
    same = make_vit(task_names=('cls', 'det'), num_experts=4, top_k=2)
    same.load_pretrained(path)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(same.state_dict()[key], value, msg=key)

    bigger = make_vit(task_names=('cls', 'det'), num_experts=8, top_k=2)
    with pytest.raises(ValueError, match='has 4 experts but the model has 8.*'
                       'expand_experts=True'):
        bigger.load_pretrained(path)
    bigger.load_pretrained(path, expand_experts=True)
    w1 = bigger.layers[1].ffn.experts.w1
    torch.testing.assert_close(w1[4:], source.layers[1].ffn.experts.w1)


def test_position_embedding_resized_from_checkpoint():
    vit = VisionTransformer(arch=TINY, img_size=224, patch_size=16)
    model = make_vit(img_size=64)
    model.load_pretrained(vit.state_dict())
    assert model.pos_embed.shape == (1, 17, 64)
    no_cls = make_vit(img_size=64, with_cls_token=False, out_type='featmap')
    no_cls.load_pretrained(vit.state_dict())
    assert no_cls.pos_embed.shape == (1, 16, 64)


def test_init_cfg_pretrained(tmp_path):
    vit = dense_vit()
    path = str(tmp_path / 'dense.pth')
    torch.save(vit.state_dict(), path)
    model = make_vit(moe_layers='none', task_embed=False,
                     init_cfg=dict(type='Pretrained', checkpoint=path)).eval()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(model(x)[0], vit(x)[0])


def test_layer_depth_for_layer_wise_lr_decay():
    model = make_vit()
    assert model.get_layer_depth('backbone.pos_embed', 'backbone.') == (0, 6)
    assert model.get_layer_depth('backbone.layers.2.ffn.experts.w1',
                                 'backbone.') == (3, 6)
    assert model.get_layer_depth('head.fc.weight', 'backbone.') == (5, 6)
