"""Offline expert usage: the report equals a hand count of forced routing (MoA and MoE
MLP); summary numbers on known usage; the heatmap's panels; the tool writes
usage.json and usage.png from a checkpoint and each task's val dataloader."""
import json
import math

import pytest
import torch
from mmengine.config import Config

from mod_squad.analysis import UsageReport, format_summary, plot_usage, summarize
from mod_squad.analysis.expert_usage import (LayerUsage, build_task_dataloaders,
                                             jaccard)
from mod_squad.models import ModSquadViT
from mod_squad.moe import ExpertSelection

TASKS = ('a', 'b')


def force(router, task, bias):
    """Every token of ``task`` gets the logits ``bias``: a known routing."""
    with torch.no_grad():
        router.weight[task].zero_()
        router.bias[task].copy_(torch.tensor(bias))


def test_report_equals_a_hand_count_on_moa_and_mlp(tmp_path):
    # block 0: MoA, 4 head experts top-2; block 1: MoE MLP, 4 experts top-2
    model = ModSquadViT(
        arch=dict(embed_dims=16, num_layers=2, num_heads=2, feedforward_channels=32),
        task_names=TASKS, img_size=16, patch_size=8, num_experts=4, top_k=2,
        moe_layers=dict(moa=[0], mlp=[1])).eval()
    biases = {('attn', 'a'): [0., 3., 0., 2.], ('ffn', 'a'): [4., 4.5, 0., 0.],
              ('attn', 'b'): [1., 0., 0., 5.], ('ffn', 'b'): [0., 0., 6., 5.]}
    for (part, task), bias in biases.items():
        force(getattr(model.layers[0 if part == 'attn' else 1], part).router, task, bias)
    with torch.no_grad():
        model(torch.randn(3, 3, 16, 16), task='a')
        model(torch.randn(2, 3, 16, 16), task='b')
    report = UsageReport.from_model(model, TASKS, 'hand count')
    tokens = {'a': 3 * 5, 'b': 2 * 5}  # images x (cls + 2x2 patches)
    picks = {('attn', 'a'): [0, 1, 0, 1], ('ffn', 'a'): [1, 1, 0, 0],
             ('attn', 'b'): [1, 0, 0, 1], ('ffn', 'b'): [0, 0, 1, 1]}
    assert [(layer.name, layer.kind) for layer in report.layers] == [
        ('layers.0.attn', 'MoA'), ('layers.1.ffn', 'MLP')]
    for layer, part in zip(report.layers, ('attn', 'ffn')):
        assert layer.top_k == {'a': 2, 'b': 2}
        for t, task in enumerate(TASKS):
            n = tokens[task]
            assert layer.tokens[t] == n
            assert layer.counts[t].tolist() == [n * p for p in picks[part, task]]
            mass = n * torch.tensor(biases[part, task]).softmax(0).double()
            # fp32 probabilities summed over the tokens
            torch.testing.assert_close(layer.prob_mass[t], mass, rtol=1e-6, atol=0)

    path = tmp_path / 'usage.json'
    report.save(str(path))
    data = json.loads(path.read_text())
    mlp = data['layers'][1]
    assert mlp['counts']['b'] == [0, 0, 10, 10]
    assert mlp['pick_share']['b'] == [0., 0., 0.5, 0.5]
    assert mlp['mass_share']['a'] == pytest.approx(
        torch.tensor(biases['ffn', 'a']).softmax(0).tolist())
    loaded = UsageReport.load(str(path))
    assert loaded.tasks == list(TASKS) and loaded.source == 'hand count'
    for a, b in zip(loaded.layers, report.layers):
        assert (a.name, a.kind, a.top_k) == (b.name, b.kind, b.top_k)
        assert torch.equal(a.counts, b.counts) and torch.equal(a.tokens, b.tokens)
        torch.testing.assert_close(a.prob_mass, b.prob_mass)

    with pytest.raises(ValueError, match="no router for tasks \\['c'\\]"):
        UsageReport.from_model(model, ['a', 'c'])
    with pytest.raises(ValueError, match='no MoE layer'):
        UsageReport.from_model(torch.nn.Linear(2, 2), ['a'])


def known_report(num_layers=2):
    """2 tasks, layers of 4 experts with k = 1 and known usage."""
    counts = torch.tensor([[60, 30, 10, 0], [0, 10, 40, 50]])
    mass = torch.tensor([[0.5, 0.4, 0.05, 0.05], [0.25, 0.25, 0.25, 0.25]]).double()
    layers = [
        LayerUsage(f'layers.{i}.ffn', 'MLP', {'a': 1, 'b': 1}, counts, mass * 100,
                   torch.tensor([100, 100])) for i in range(num_layers)
    ]
    return UsageReport(list(TASKS), layers, 'known')


def test_summary_on_known_usage():
    report = known_report()
    # threshold 20, k = 1: keep picks > 20% -> a: {0, 1}, b: {2, 3}
    summary = summarize(report, ExpertSelection(threshold=20))
    a, b = summary['tasks']['a'], summary['tasks']['b']
    assert a['layers']['layers.0.ffn']['kept'] == [0, 1]
    assert b['layers']['layers.1.ffn']['kept'] == [2, 3]
    assert a['cover'] == 2 and b['cover'] == 4  # 0.5 + 0.4; uniform needs all 4
    entropy_a = -(0.6 * math.log(0.6) + 0.3 * math.log(0.3) + 0.1 * math.log(0.1))
    assert a['entropy'] == pytest.approx(entropy_a)
    assert a['num_kept'] == 2
    assert summary['overlap']['a-b']['mean'] == 0.
    # threshold 5: a keeps {0, 1, 2}, b keeps {1, 2, 3}: Jaccard 2 / 4
    summary = summarize(report, ExpertSelection(threshold=5))
    assert summary['overlap']['a-b']['layers']['layers.0.ffn'] == 0.5
    assert summary['selection'].startswith('threshold 5')
    text = format_summary(report, summary)
    assert 'Jaccard' in text and 'layers.1.ffn' in text and '3 [0, 1, 2]' in text
    assert jaccard([], []) == 1. and jaccard([1, 2], [2, 3]) == pytest.approx(1 / 3)

    unused = known_report()
    unused.layers[1].counts = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]])
    with pytest.raises(ValueError, match="Task 'b': Layer 'layers.1.ffn'"):
        summarize(unused)


def test_heatmap_panel_per_layer_or_per_task(tmp_path):
    report = known_report(2)
    kept = report.kept_experts(ExpertSelection(threshold=20))
    fig = plot_usage(report, str(tmp_path / 'a.png'), 'counts', kept)
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ['layers.0.ffn (MLP)',
                                                 'layers.1.ffn (MLP)']
    assert panels[0].images[0].get_array().shape == (2, 4)  # tasks x experts
    assert len(panels[0].patches) == 4  # kept: 2 per task
    assert (tmp_path / 'a.png').stat().st_size > 0

    many = known_report(13)
    fig = plot_usage(many, str(tmp_path / 'b.png'), 'prob_mass', max_panels=12)
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == list(TASKS)
    assert panels[1].images[0].get_array().shape == (13, 4)  # layers x experts
    with pytest.raises(ValueError, match='statistic'):
        plot_usage(many, str(tmp_path / 'c.png'), 'tokens')


def test_dataloaders_need_a_multi_task_config():
    cfg = Config(dict(val_dataloader=dict(batch_size=1, dataset=dict(type='X'))))
    with pytest.raises(ValueError, match='map each task'):
        build_task_dataloaders(cfg)
    cfg = Config(dict(test_dataloader=dict(a=dict(dataset=dict(type='X')))))
    with pytest.raises(ValueError, match=r"Tasks \['b'\] have no test_dataloader"):
        build_task_dataloaders(cfg, 'test', ['b'])


def test_tool_writes_json_and_png_counting_forced_routing(demo_cfg, load_script,
                                                          build_in_scope, tmp_path):
    tool = load_script('tools/analysis_tools/expert_usage.py')
    model = build_in_scope('mod_squad', demo_cfg.model)
    backbone = model.backbone
    # cls: every token to experts {1, 3} of each MoE MLP and heads {0, 1, 2, 5} of
    # each MoA (8 experts: top-2 MLPs, top-4 MoAs, alternating)
    for layer in backbone.layers:
        mixture = layer.ffn if layer.is_moe_mlp else layer.attn
        bias = [0.] * 8
        for e in ([1, 3] if layer.is_moe_mlp else [0, 1, 2, 5]):
            bias[e] = 5.
        force(mixture.router, 'cls', bias)
    checkpoint = tmp_path / 'model.pth'
    torch.save(dict(state_dict=model.state_dict()), checkpoint)
    config = tmp_path / 'demo.py'
    demo_cfg.dump(str(config))
    no_workers = [f'val_dataloader.{t}.{k}={v}' for t in ('cls', 'det', 'seg')
                  for k, v in (('num_workers', 0), ('persistent_workers', False))]
    out = tmp_path / 'usage'
    tool.main([str(config), str(checkpoint), '--out-dir', str(out), '--device', 'cpu',
               '--cfg-options', *no_workers])

    data = json.loads((out / 'usage.json').read_text())
    assert data['tasks'] == ['cls', 'det', 'seg']
    assert [layer['kind'] for layer in data['layers']] == ['MoA', 'MLP'] * 3
    tokens = 20 * (1 + 8 * 8)  # the 20 val images of 64 px, patch 8, + cls token
    for layer in data['layers']:
        chosen = [1, 3] if layer['kind'] == 'MLP' else [0, 1, 2, 5]
        assert layer['tokens']['cls'] == tokens
        assert layer['counts']['cls'] == [tokens if e in chosen else 0 for e in range(8)]
        for task in ('det', 'seg'):  # the other tasks ran too: k picks per token
            assert layer['tokens'][task] > 0
            assert sum(layer['counts'][task]) == layer['top_k'][task] * layer['tokens'][
                task]
    summary = data['summary']['tasks']['cls']
    assert summary['layers']['backbone.layers.1.ffn']['kept'] == [1, 3]
    assert summary['layers']['backbone.layers.0.attn']['kept'] == [0, 1, 2, 5]
    # 3 MoAs with 4 equal heads, 3 MLPs with 2 equal experts
    assert summary['entropy'] == pytest.approx((math.log(4) + math.log(2)) / 2)
    assert (out / 'usage.png').stat().st_size > 0
