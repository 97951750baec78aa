"""ModSquadViT compute control (per-task top-k and enabled experts, from the
constructor, a config's ``--cfg-options`` or ``set_compute``) and per-block expert
counts."""
import argparse

import pytest
import torch
from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope
from mmpretrain.models import VisionTransformer

from mod_squad.models import ModSquadViT
from mod_squad.registry import MODELS

TINY = dict(embed_dims=64, num_layers=4, num_heads=2, feedforward_channels=256)
TASKS = ('cls', 'det')
DEMO_CONFIG = 'configs/mod_squad/mod-squad_vit-demo_2k_synthetic-cls-det-seg.py'


def make_vit(**kwargs) -> ModSquadViT:
    """A tiny ModSquadViT (MoA on blocks 0, 2 with 4 heads top-2; MoE MLPs on 1, 3
    with 6 experts top-3 by default) with informative routers, in eval mode."""
    kwargs = dict(dict(arch=TINY, img_size=32, task_names=TASKS, num_experts=6,
                       top_k=3, expert_hidden=32), **kwargs)
    torch.manual_seed(0)
    model = ModSquadViT(**kwargs)
    model.init_weights()
    for name, param in model.named_parameters():
        if '.router.' in name or 'task_embed' in name:
            torch.nn.init.normal_(param, std=0.5)
    return model.eval()


def compute_of(model, task):
    """{layer name: (k, enabled experts)} of every routed layer."""
    return {name: (layer.top_k_of(task), layer.enabled_experts_of(task))
            for name, layer in model.routed_layers().items()}


def cfg_options(*options):
    """``--cfg-options`` parsed as the OpenMMLab tools parse them."""
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(['--cfg-options', *options]).cfg_options


IMAGES = torch.randn(2, 3, 32, 32)  # 2 x (1 + 4) tokens


# --- compute control ------------------------------------------------------------------
def test_full_compute_is_bit_identical():
    model = make_vit()
    before = model(IMAGES, 'det')[0]
    model.set_compute('det', top_k=dict(mlp=3, attn=2),
                      enabled_experts={0: [0, 1, 2, 3], 1: list(range(6))})
    assert torch.equal(model(IMAGES, 'det')[0], before)
    from_cfg = make_vit(inference_top_k=dict(det=dict(mlp=3)))
    assert torch.equal(from_cfg(IMAGES, 'det')[0], before)


def test_lower_k_routes_every_token_to_fewer_experts():
    model = make_vit(inference_top_k=dict(det=1))
    heads, experts = [0, 1, 2, 3], list(range(6))
    assert compute_of(model, 'det') == {
        'layers.0.attn': (1, heads), 'layers.1.ffn': (1, experts),
        'layers.2.attn': (1, heads), 'layers.3.ffn': (1, experts)}
    assert compute_of(model, 'cls') == {
        'layers.0.attn': (2, heads), 'layers.1.ffn': (3, experts),
        'layers.2.attn': (2, heads), 'layers.3.ffn': (3, experts)}
    y = model(IMAGES, 'det')[0]
    for layer in model.routed_layers().values():
        assert layer.usage.counts[1].sum() == 10  # 10 tokens x 1 expert
    assert not torch.allclose(y, make_vit()(IMAGES, 'det')[0])


def test_per_kind_top_k_and_enabled_experts_by_block():
    model = make_vit(moe_layers=dict(moa=[0], mlp=[0, 1]))
    model.set_compute('det', top_k=dict(attn=1),
                      enabled_experts={'0': dict(attn=[1, 3], mlp=[0, 2, 4]),
                                       1: [5, 1, 2]})
    assert compute_of(model, 'det') == {
        'layers.0.attn': (1, [1, 3]), 'layers.0.ffn': (3, [0, 2, 4]),
        'layers.1.ffn': (3, [1, 2, 5])}
    model(IMAGES, 'det')
    usage = {name: layer.usage.counts[1] for name, layer in model.routed_layers().items()}
    assert usage['layers.0.attn'].tolist()[0::2] == [0, 0]
    assert usage['layers.0.ffn'][[1, 3, 5]].eq(0).all()
    assert usage['layers.1.ffn'][[0, 3, 4]].eq(0).all()
    model.set_compute('det')  # back to the built model
    assert compute_of(model, 'det') == compute_of(model, 'cls')


def test_cfg_options_reach_the_backbone_of_a_built_config():
    cfg = Config.fromfile(DEMO_CONFIG)
    cfg.merge_from_dict(cfg_options('model.backbone.inference_top_k.det=1',
                                    'model.backbone.inference_top_k.seg.attn=2',
                                    'model.backbone.enabled_experts.cls.1=[0,3,5]'))
    init_default_scope('mod_squad')
    backbone = MODELS.build(cfg.model).backbone
    det, seg, cls = (compute_of(backbone, t) for t in ('det', 'seg', 'cls'))
    assert {k for k, _ in det.values()} == {1}
    assert seg['layers.0.attn'][0] == 2 and seg['layers.1.ffn'][0] == 2
    assert cls['layers.1.ffn'] == (2, [0, 3, 5])
    assert cls['layers.3.ffn'] == (2, list(range(8)))


def test_a_dict_written_in_cfg_options_points_to_the_dotted_form():
    cfg = Config.fromfile(DEMO_CONFIG)
    cfg.merge_from_dict(cfg_options('model.backbone.inference_top_k=dict(det=2)'))
    init_default_scope('mod_squad')
    with pytest.raises(ValueError, match=r"inference_top_k got the string "
                       r"'dict\(det=2\)': --cfg-options does not parse dicts; give one "
                       r'key per task, e.g. model.backbone.inference_top_k.det=2'):
        MODELS.build(cfg.model.backbone)


@pytest.mark.parametrize('kwargs,message', [
    (dict(inference_top_k=dict(depth=2)), r"inference_top_k names unknown tasks "
     r"\['depth'\]; this ModSquadViT has tasks \['cls', 'det'\]"),
    (dict(enabled_experts=[1, 2]), r'enabled_experts must be a dict by task'),
    (dict(enabled_experts=dict(det=[1, 2])), r"enabled_experts of task 'det' must be a "
     r'dict by block index, e.g. \{1: \[0, 3\]\}, got \[1, 2\]'),
    (dict(inference_top_k=dict(det=dict(ffn=2))), r"top_k of task 'det' has unknown "
     r"layer kinds \['ffn'\]; valid kinds are \['attn', 'mlp'\]"),
    (dict(inference_top_k=dict(det=5)), r"^layers.0.attn: top_k of task 'det' must be "
     r'an int in \[1, num_experts=4\], got 5'),
    (dict(enabled_experts=dict(det={4: [0]})), r"enabled_experts of task 'det', block "
     r'4: keys are block indices in \[0, 4\)'),
    (dict(enabled_experts=dict(det={'x': [0]})), r"block 'x': keys are block indices"),
    (dict(moe_layers=dict(mlp=[1]), enabled_experts=dict(det={0: [0]})),
     r"enabled_experts of task 'det', block 0: the block has no mixture of experts"),
    (dict(moe_layers=dict(moa=[0], mlp=[0]), enabled_experts=dict(det={0: [0, 1]})),
     r"block 0: the block has 2 mixtures \['attn', 'mlp'\]; give dict\(attn=\[...\], "
     r'mlp=\[...\]\) for a block with both'),
    (dict(enabled_experts=dict(det={1: dict(attn=[0])})), r"block 1: no 'attn' mixture "
     r"there \(it has \['mlp'\]\)"),
    (dict(enabled_experts=dict(det={3: [7]})), r"^layers.3.ffn: enabled_experts of task "
     r"'det' must be a non-empty list of expert ids in \[0, 6\), got \[7\]"),
])
def test_compute_errors_name_the_culprit(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make_vit(**kwargs)


def test_a_failed_set_compute_changes_nothing():
    model = make_vit(inference_top_k=dict(det=2))
    before = compute_of(model, 'det')
    with pytest.raises(ValueError, match=r"^layers.3.ffn: top_k=2 of task 'det' is "
                       r'larger than its 1 enabled experts \[4\]'):
        model.set_compute('det', top_k=2, enabled_experts={1: [0, 5], 3: [4]})
    assert compute_of(model, 'det') == before


# --- per-block expert counts ----------------------------------------------------------
PER_BLOCK = dict(num_experts=[None, 3, None, 5], top_k=[None, 2, None, 1],
                 num_attn_experts=[4, None, 3, None], attn_top_k=(2, 0, 1, 0))


def test_per_block_counts_build_and_load_from_a_config():
    model = make_vit(**PER_BLOCK, expert_hidden=None)
    layers = model.routed_layers()
    assert {n: (m.num_experts, m.top_k) for n, m in layers.items()} == {
        'layers.0.attn': (4, 2), 'layers.1.ffn': (3, 2),
        'layers.2.attn': (3, 1), 'layers.3.ffn': (5, 1)}
    # default expert width: the dense MLP's over the block's k
    assert layers['layers.1.ffn'].experts.w1.shape == (3, 64, 128)
    assert layers['layers.3.ffn'].experts.w1.shape == (5, 64, 256)
    assert layers['layers.2.attn'].q_proj.shape == (3, 64, 32)
    cfg = Config(dict(model=dict(type='mod_squad.ModSquadViT', arch=TINY, img_size=32,
                                 task_names=TASKS, **PER_BLOCK)))
    init_default_scope('mod_squad')
    built = MODELS.build(cfg.model).eval()
    built.load_state_dict(model.state_dict())
    assert torch.equal(built(IMAGES, 'det')[0], model(IMAGES, 'det')[0])


def test_per_block_count_mismatch_names_the_layer():
    model = make_vit(**PER_BLOCK)
    other = make_vit(**dict(PER_BLOCK, num_experts=[None, 3, None, 4]))
    with pytest.raises(ValueError, match=r"expert counts differ from this "
                       r"ModSquadViT's: layers.3.ffn has 5 experts in the checkpoint, "
                       r'4 in the model\. '):
        other.load_state_dict(model.state_dict())


def test_dense_checkpoint_upcycles_into_per_block_counts():
    torch.manual_seed(0)
    vit = VisionTransformer(arch=TINY, img_size=32, patch_size=16)
    dense = vit.state_dict()
    model = make_vit(**PER_BLOCK, expert_hidden=64)
    model.load_pretrained(dense)
    fc1 = dense['layers.3.ffn.layers.0.0.weight']  # (256, 64): 4 slices of 64 units
    w1 = model.layers[3].ffn.experts.w1  # (5, 64, 64)
    torch.testing.assert_close(w1[3], fc1[192:256].t())
    torch.testing.assert_close(w1[4], fc1[0:64].t())  # wraps round
    assert model.layers[1].ffn.experts.w1.shape == (3, 64, 64)
    qkv = dense['layers.2.attn.qkv.weight']  # 2 dense heads of 32
    torch.testing.assert_close(model.layers[2].attn.q_proj[2], qkv[0:32].t())


@pytest.mark.parametrize('kwargs,message', [
    (dict(num_experts=[6, 6]), r'num_experts must be an int or a sequence of one entry '
     r'per block \(4\), got 2 entries: \[6, 6\]'),
    (dict(num_experts=[6, None, 6, 6]), r'Block 1: num_experts must be a positive int, '
     r'got None'),
    (dict(top_k=[None, 3, None, 7]), r'Block 3: top_k=7 must be in \[1, num_experts=6\]'),
    (dict(attn_top_k=[0, None, 2, None]), r'Block 0: attn_top_k must be a positive '
     r'int, got 0'),
])
def test_per_block_count_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_vit(**kwargs)
