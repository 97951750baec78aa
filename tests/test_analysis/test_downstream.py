"""The downstream table (``mod_squad.analysis.downstream``,
``tools/analysis_tools/downstream_table.py``) on a tiny fake work directory: the final
metric, mean seconds per iteration and the logged trainable parameters of each run, the
deployed model's cost from the dumped config, mean and spread over seeds."""
import json
from pathlib import Path

import pytest
from mmengine.config import Config

from mod_squad.analysis import analyze_complexity, build_model
from mod_squad.analysis.complexity import dummy_batch
from mod_squad.analysis.downstream import collect, final_metric, read_run

# a stock mmpretrain classifier with a tiny single-task ModSquadViT whose last expert
# of every layer trains (a split expert stack)
TINY_CONFIG = """
default_scope = 'mmpretrain'
custom_imports = dict(imports=['mod_squad'], allow_failed_imports=False)
model = dict(
    type='ImageClassifier',
    data_preprocessor=dict(type='ClsDataPreprocessor', mean=[0, 0, 0], std=[1, 1, 1],
                           num_classes=3),
    backbone=dict(type='mod_squad.ModSquadViT', task_names=('cls', ), img_size=32,
                  patch_size=8, num_experts=4, top_k=2,
                  trainable=dict(mode='experts', last=1),
                  arch=dict(embed_dims=16, num_layers=2, num_heads=2,
                            feedforward_channels=32)),
    head=dict(type='LinearClsHead', num_classes=3, in_channels=16))
"""
# (mode, seed) -> (top-1, seconds per iteration of the two logged windows)
RUNS = {('full', 0): (50.0, (0.3, 0.5)), ('full', 1): (46.0, (0.2, 0.2)),
        ('routers', 0): (40.5, (0.1, 0.1)), ('routers', 1): (41.5, (0.1, 0.3))}
TRAINABLE = dict(full=(9_999, 9_999), routers=(1_234, 9_999))


def fake_run(run_dir: Path, top1: float, times, trainable, metric='accuracy/top1'):
    """A finished run as mmengine leaves it: the dumped config, a log with the
    TrainableParamsHook line, scalars of two logged windows and a validation."""
    log_dir = run_dir / '20261206_000000'
    (log_dir / 'vis_data').mkdir(parents=True)
    (run_dir / 'tiny_config.py').write_text(TINY_CONFIG)
    (log_dir / '20261206_000000.log').write_text(
        f'INFO - Trainable parameters: {trainable[0]:,} / {trainable[1]:,} (x%)\n')
    entries = [dict(lr=1e-3, loss=1.0, time=t, iter=50 * (i + 1), step=50 * (i + 1))
               for i, t in enumerate(times)]
    entries.append({metric: top1, 'time': 9.0, 'step': 0})  # validation
    (log_dir / 'vis_data' / 'scalars.json').write_text(
        ''.join(json.dumps(e) + '\n' for e in entries))


@pytest.fixture
def work_dir(tmp_path):
    for (mode, seed), (top1, times) in RUNS.items():
        fake_run(tmp_path / f'seed{seed}' / mode, top1, times, TRAINABLE[mode])
    return tmp_path


def test_read_run(work_dir):
    run = read_run(str(work_dir / 'seed0' / 'full'))
    assert run.metric == 50.0 and run.sec_per_iter == pytest.approx(0.4)
    assert (run.trainable, run.total) == TRAINABLE['full']
    assert run.config.endswith('tiny_config.py')


def test_collect_rows_mean_spread_and_deployed_cost(work_dir):
    rows = collect(str(work_dir), modes=['routers', 'full'])
    assert [row['mode'] for row in rows] == ['routers', 'full']
    routers, full = rows
    assert routers['by_seed'] == {0: 40.5, 1: 41.5}
    assert routers['mean'] == pytest.approx(41.0)
    assert routers['spread'] == pytest.approx(1.)
    assert full['mean'] == pytest.approx(48.0) and full['spread'] == pytest.approx(4.)
    assert full['sec_per_iter'] == pytest.approx(0.3)  # mean of 0.4 and 0.2
    assert (routers['trainable'], routers['total']) == TRAINABLE['routers']
    model = build_model(Config.fromstring(TINY_CONFIG, '.py')).requires_grad_(False)
    data = dummy_batch(model, 'cls', (32, 32))
    cost = analyze_complexity(model, data['inputs'], 'cls', data['data_samples'])
    assert full['deployed_task'] == 'cls' and full['deployed_input_shape'] == (32, 32)
    assert full['deployed_params'] == cost.params.task == sum(
        p.numel() for p in model.parameters())
    assert full['deployed_flops'] == cost.flops > 0
    assert [row['mode'] for row in collect(str(work_dir))] == ['full', 'routers']


def test_tool_writes_markdown_and_json(load_script, work_dir, tmp_path):
    tool = load_script('tools/analysis_tools/downstream_table.py')
    rows = tool.main([str(work_dir), '--modes', 'full', 'routers',
                      '--out-dir', str(tmp_path / 'out')])
    table = (tmp_path / 'out' / 'downstream.md').read_text().splitlines()
    assert table[0].split(' | ')[-4:] == ['seed 0', 'seed 1', 'mean', 'spread |']
    assert table[2].startswith('| full | 9,999 (100.0%) | 9,999 |')
    assert table[3].endswith('| 40.5 | 41.5 | 41.00 | 1.0 |')
    saved = json.loads((tmp_path / 'out' / 'downstream.json').read_text())
    assert [row['mean'] for row in saved] == [row['mean'] for row in rows]


def test_multi_task_metric_and_errors(work_dir, tmp_path):
    fake_run(tmp_path / 'seed0' / 'continual', 30.0, (0.1, ), TRAINABLE['full'],
             metric='downstream/accuracy/top1')
    assert read_run(str(tmp_path / 'seed0' / 'continual')).metric == 30.0
    with pytest.raises(ValueError, match='several metrics'):
        final_metric([{'a/accuracy/top1': 1, 'b/accuracy/top1': 2}], 'accuracy/top1',
                     'scalars.json')
    with pytest.raises(ValueError, match="no validation entry with 'mIoU'"):
        read_run(str(tmp_path / 'seed0' / 'continual'), 'mIoU')
    log = next((work_dir / 'seed0' / 'full').glob('*/*.log'))
    log.write_text('no hook\n')
    with pytest.raises(ValueError, match='TrainableParamsHook'):
        read_run(str(work_dir / 'seed0' / 'full'))
    with pytest.raises(FileNotFoundError, match=r"No runs of modes \['adapter'\]"):
        collect(str(work_dir), modes=['routers', 'adapter'])
    with pytest.raises(FileNotFoundError, match='not an mmengine work directory'):
        read_run(str(tmp_path))
