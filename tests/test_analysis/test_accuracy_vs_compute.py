"""Accuracy vs compute: a lower k is counted as fewer active FLOPs, the full
setting gives the stock test loop's metrics, kept-expert settings disable the other
experts; the settings are restored; the tool writes its json, table and plot."""
import json

import pytest
import torch

from mod_squad.analysis import build_model
from mod_squad.analysis.accuracy_vs_compute import (ComputeSetting, evaluate_setting,
                                                    primary_metric)
from mod_squad.analysis.expert_usage import build_task_dataloaders

@pytest.fixture
def cfg(demo_cfg):
    for split in ('val', 'test'):
        for task in ('cls', 'det', 'seg'):
            demo_cfg[f'{split}_dataloader'][task].num_workers = 0
            demo_cfg[f'{split}_dataloader'][task].persistent_workers = False
    return demo_cfg


def test_settings_change_compute_and_are_restored(cfg):
    model = build_model(cfg)
    loader = build_task_dataloaders(cfg, 'val', ['cls'])['cls']
    evaluator = cfg.val_evaluator.cls
    full = evaluate_setting(model, 'cls', ComputeSetting('full'), loader, evaluator)
    assert full.metric == 'accuracy/top1' and set(full.top_k.values()) == {2, 4}
    lower = evaluate_setting(model, 'cls', ComputeSetting('k1', 1), loader, evaluator)
    assert set(lower.top_k.values()) == {1}
    assert lower.gflops < full.gflops and lower.active_params < full.active_params
    assert lower.params == full.params
    kept = {f'backbone.layers.{i}.{"attn" if i % 2 == 0 else "ffn"}':
            [0, 1, 2, 3] if i % 2 == 0 else [4, 5] for i in range(6)}
    pruned = evaluate_setting(model, 'cls', ComputeSetting('kept', kept=kept), loader,
                              evaluator)
    assert set(pruned.num_experts.values()) == {4, 2}
    assert pruned.gflops == full.gflops and pruned.params < full.params
    # restored: the full setting again gives the same metrics and FLOPs
    again = evaluate_setting(model, 'cls', ComputeSetting('full'), loader, evaluator)
    assert (again.metrics, again.gflops) == (full.metrics, full.gflops)
    assert all(len(layer.enabled_experts_of('cls')) == 8
               for layer in model.backbone.routed_layers().values())


def test_full_setting_equals_the_test_loop(cfg, tmp_path, load_script):
    model = build_model(cfg)
    checkpoint = tmp_path / 'model.pth'
    torch.save(dict(state_dict=model.state_dict()), checkpoint)
    config = tmp_path / 'demo.py'
    cfg.dump(str(config))
    metrics = load_script('tools/test.py').main(
        [str(config), str(checkpoint), '--task', 'seg', '--work-dir', str(tmp_path)])
    loader = build_task_dataloaders(cfg, 'val', ['seg'])['seg']
    full = evaluate_setting(model, 'seg', ComputeSetting('full'), loader,
                            cfg.val_evaluator.seg)
    assert full.metric == 'mIoU'
    assert full.metrics == {k.split('/', 1)[1]: v for k, v in metrics.items()}


def test_primary_metric():
    assert primary_metric({'aAcc': 1., 'mIoU': 2.}) == 'mIoU'
    assert primary_metric({'coco/bbox_mAP_50': 1.,
                           'coco/bbox_mAP': 2.}) == 'coco/bbox_mAP'
    assert primary_metric({'other': 1.}) == 'other'


def test_tool_writes_results_table_and_plot(cfg, tmp_path, load_script):
    tool = load_script('tools/analysis_tools/accuracy_vs_compute.py')
    model = build_model(cfg)
    checkpoint = tmp_path / 'model.pth'
    torch.save(dict(state_dict=model.state_dict()), checkpoint)
    config = tmp_path / 'demo.py'
    cfg.dump(str(config))
    out = tmp_path / 'out'
    results = tool.main([str(config), str(checkpoint), '--task', 'cls', 'det',
                         '--top-k', '1', '--attn-top-k', '2', '--keep-ratio', '0.5',
                         '--max-batches', '1', '--out-dir', str(out), '--device', 'cpu'])
    names = [(r.task, r.setting) for r in results]
    assert names == [(t, s) for t in ('cls', 'det')
                     for s in ('full', 'mlp k=1', 'attn k=2', 'kept: keep_ratio 0.5')]
    data = json.loads((out / 'results.json').read_text())
    assert [d['setting'] for d in data] == [s for _, s in names]
    by_name = {(r.task, r.setting): r for r in results}
    for task in ('cls', 'det'):
        assert by_name[task, 'mlp k=1'].gflops < by_name[task, 'full'].gflops
        assert by_name[task, 'attn k=2'].gflops < by_name[task, 'full'].gflops
        assert by_name[task, 'kept: keep_ratio 0.5'].mean_experts == 4
    table = (out / 'results.md').read_text()
    assert table.count('\n') == 2 + len(results) and '| det | mlp k=1 |' in table
    assert (out / 'accuracy_vs_compute.png').stat().st_size > 0
