"""Active FLOPs and parameters: hand counts on tiny MoE layers, the dense ViT against
mmpretrain's under mmengine's counter, and the get_flops tool on the demo config."""
import pytest
import torch
import torch.nn as nn
from mmengine.analysis import get_model_complexity_info
from mmengine.config import Config

from mod_squad.analysis import analyze_complexity, count_parameters
from mod_squad.analysis import build_model
from mod_squad.analysis.complexity import drop_auxiliary_heads, dummy_batch
from mod_squad.models import ModSquadViT
from mod_squad.moe import MoAttention, MoEMLP, RouterConfig, train_experts

DEMO_CONFIG = 'configs/mod_squad/mod-squad_vit-demo_2k_synthetic-cls-det-seg.py'
TASKS = ('a', 'b')


class Routed(nn.Module):
    """Routed layers run one after the other with task ``a``'s routers."""

    def __init__(self, *layers):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x, 'a')
        return x


def moe_mlp(**router):
    # C=8, E=4, k=2, H=6; linear routers with bias
    return MoEMLP(8, 4, 2, 6, TASKS, router_cfg=RouterConfig(**router))


def moa():
    # C=8, E=4 heads, k=2, hd=4, qkv biases
    return MoAttention(8, 4, 2, 4, TASKS)


@pytest.mark.parametrize('init', ['zeros', 'trunc_normal'])
def test_moe_mlp_flops_equal_the_hand_count(init):
    # N=5 tokens, C=8, E=4, k=2, H=6; one multiply-add = one FLOP:
    #   router  (N, C) @ (C, E)                              N*C*E     = 160
    #   experts sum_e n_e = N*k rows: (C -> H) and (H -> C)  2*N*k*C*H = 960
    #   gate-weighted sum of the k slots (elementwise)                     0
    # whatever the routing (zeros: every token on experts 0, 1). All experts
    # (k = E = 4): 160 + 960 * 4 / 2 = 2080.
    result = analyze_complexity(Routed(moe_mlp(init=init)), torch.randn(5, 8))
    assert result.task == 'a'
    assert result.flops == 1120
    assert result.all_experts_flops == 2080
    assert result.analyzer.by_operator() == {'addmm': 1120}


def test_moe_mlp_flops_follow_a_lower_k():
    # k=1: 160 + 2*5*1*8*6 = 640; all experts unchanged: 160 + 480 * 4 = 2080
    layer = moe_mlp(init='trunc_normal')
    layer.router.set_compute('a', top_k=1)
    result = analyze_complexity(Routed(layer), torch.randn(5, 8))
    assert (result.flops, result.all_experts_flops) == (640, 2080)


def test_some_experts_training_count_as_the_whole_layer_and_flags_are_restored():
    """A split expert stack (train_experts) traces; requires_grad comes back."""
    layer = moe_mlp(init='trunc_normal')
    whole = analyze_complexity(Routed(layer), torch.randn(5, 8))
    train_experts(layer, [1, 3])
    flags = {n: p.requires_grad for n, p in layer.named_parameters()}
    split = analyze_complexity(Routed(layer), torch.randn(5, 8))
    assert (split.flops, split.all_experts_flops) == (whole.flops, whole.all_experts_flops)
    assert {n: p.requires_grad for n, p in layer.named_parameters()} == flags
    assert flags['experts.parametrizations.w1.0.rows']


def test_grouped_mm_path_counts_as_the_loop():
    # H=8 (torch._grouped_mm wants 16-byte rows): experts 2*N*k*C*H = 1280
    layer = MoEMLP(8, 4, 2, 8, TASKS, router_cfg=RouterConfig(init='trunc_normal'))
    loop = analyze_complexity(Routed(layer), torch.randn(5, 8))
    layer.router_cfg.impl = 'grouped_mm'
    grouped = analyze_complexity(Routed(layer), torch.randn(5, 8))
    assert grouped.analyzer.by_operator()['_grouped_mm'] == 1280
    assert grouped.flops == loop.flops == 160 + 1280


def test_moa_flops_equal_the_hand_count():
    # B=2, N=3 tokens, C=8, E=4 heads, k=2, hd=4; the M = B*N*k = 12 slots:
    #   router   (6, C) @ (C, E)                                     6*8*4   = 192
    #   q_proj   each slot through its head: (M, C) @ (C, hd)        12*8*4  = 384
    #   kv_proj  shared key and value: (6, C) @ (C, 2*hd)            6*8*8   = 384
    #   sdpa     q (B, 1, N*k, hd), k and v (B, 1, N, hd):
    #            q @ k^T and attn @ v, 2 * B * (N*k) * N * hd        2*2*6*3*4 = 288
    #   o_proj   (M, hd) @ (hd, C)                                   12*4*8  = 384
    # total 1632; fixed: router + kv_proj = 576, slots 1056; all experts (k = E = 4):
    # 576 + 1056 * 4 / 2 = 2688.
    result = analyze_complexity(Routed(moa()), torch.randn(2, 3, 8))
    assert result.flops == 1632
    assert result.all_experts_flops == 2688
    assert result.analyzer.by_operator()['scaled_dot_product_attention'] == 288


def test_active_parameters_equal_the_hand_count():
    # MoE MLP: router per task C*E + E = 36; experts w1 E*C*H = 192, b1 E*H = 24,
    #   w2 192, b2 E*C = 32: 440, 110 per expert. Total 2*36 + 440 = 512.
    # MoA: router 36 per task; q_proj E*C*hd = 128, q_bias E*hd = 16, o_proj 128:
    #   272, 68 per expert; shared kv_proj C*2*hd + 2*hd = 72, o_bias 8. Total 424.
    model = Routed(moe_mlp(), moa())
    params = count_parameters(model, 'a')
    assert params.total == 512 + 424
    assert params.task == (36 + 440) + (36 + 272 + 80)
    assert params.active == (36 + 2 * 110) + (36 + 80 + 2 * 68)
    # task a runs k=1 of the MLP experts 0..2 only
    model.layers[0].router.set_compute('a', top_k=1, enabled_experts=[0, 1, 2])
    params = count_parameters(model, 'a')
    assert params.task == (36 + 3 * 110) + (36 + 272 + 80)
    assert params.active == (36 + 110) + (36 + 80 + 2 * 68)
    assert count_parameters(model, 'b').active == (36 + 2 * 110) + (36 + 80 + 2 * 68)


def test_dense_mod_squad_vit_matches_mmpretrain_vit():
    from mmpretrain.models import VisionTransformer
    arch = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)
    ours = ModSquadViT(
        arch=arch, img_size=32, patch_size=8, moe_layers='none', task_embed=False)
    stock = VisionTransformer(arch=arch, img_size=32, patch_size=8)
    ours.eval(), stock.eval()
    x = torch.randn(1, 3, 32, 32)
    counts = [get_model_complexity_info(m, inputs=(x, ), show_table=False,
                                        show_arch=False) for m in (ours, stock)]
    assert counts[0]['flops'] == counts[1]['flops']
    assert counts[0]['params'] == counts[1]['params']
    results = [analyze_complexity(m, x) for m in (ours, stock)]
    assert results[0].flops == results[1].flops
    assert results[0].all_experts_flops == results[0].flops
    assert results[0].params.active == results[0].params.total == counts[0]['params']
    # mmengine counts attention as 0: ours adds q @ k^T and attn @ v of the
    # 17 tokens (16 patches + cls), 2 layers * 2 * N * N * C
    assert results[1].flops - counts[1]['flops'] == 2 * 2 * 17 * 17 * 32


def test_analysis_leaves_the_model_as_it_was():
    model = ModSquadViT(
        arch=dict(embed_dims=16, num_layers=2, num_heads=2, feedforward_channels=32),
        task_names=TASKS, img_size=16, patch_size=8, num_experts=4, top_k=2)
    model.set_task('b')
    model(torch.randn(1, 3, 16, 16))
    usage = model.layers[1].ffn.usage.counts.clone()
    result = analyze_complexity(model, torch.randn(1, 3, 16, 16), task='a')
    assert result.task == 'a' and result.flops > 0
    assert model.training and model.task == 'b'
    assert torch.equal(model.layers[1].ffn.usage.counts, usage)
    with pytest.raises(ValueError, match=r"Unknown task 'c'.*\['a', 'b'\]"):
        analyze_complexity(model, torch.randn(1, 3, 16, 16), task='c')


@pytest.fixture(scope='module')
def demo_model():
    return drop_auxiliary_heads(build_model(Config.fromfile(DEMO_CONFIG)))


def test_task_parameters_are_those_of_its_single_task_model(demo_model):
    # the task's share of the joint model: a single-task ModSquadViT + its branch
    backbone = dict(Config.fromfile(DEMO_CONFIG).model.backbone)
    backbone.pop('type')
    for task in ('cls', 'det'):
        single = ModSquadViT(**dict(backbone, task_names=(task, ), out_type='raw'))
        expected = sum(p.numel() for m in (single, demo_model.branches[task])
                       for p in m.parameters())
        params = count_parameters(demo_model, task)
        assert params.task == expected
        assert params.total == sum(p.numel() for p in demo_model.parameters())


def test_get_flops_tool_on_the_demo_config(demo_model, load_script, capsys):
    tool = load_script('tools/analysis_tools/get_flops.py')
    (result, ) = tool.main([DEMO_CONFIG, '--task', 'det', '--shape', '32'])
    data = dummy_batch(demo_model, 'det', (32, 32))
    expected = analyze_complexity(demo_model, data['inputs'], 'det', data['data_samples'])
    assert result.input_shape == (1, 3, 32, 32)
    assert (result.flops, result.all_experts_flops, result.params) == (
        expected.flops, expected.all_experts_flops, expected.params)
    assert result.flops < result.all_experts_flops
    out = capsys.readouterr().out
    assert 'Task: det' in out and '| det  | 32x32' in out
    # a lower k from --cfg-options computes less
    (lower, ) = tool.main([DEMO_CONFIG, '--task', 'det', '--shape', '32',
                           '--cfg-options', 'model.backbone.inference_top_k.det=1'])
    assert lower.flops < result.flops and lower.params.active < result.params.active
    with pytest.raises(ValueError, match="Unknown task 'depth'"):
        tool.main([DEMO_CONFIG, '--task', 'depth', '--shape', '32'])
