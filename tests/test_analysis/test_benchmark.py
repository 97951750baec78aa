"""The model benchmark on tiny configs: the tool's table and JSON, the joint model
against a set of stock models, the synthetic batches and the table's cells."""
import json

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import OptimWrapper

from mod_squad.analysis.benchmark import (METRICS, BenchmarkSettings, Comparison,
                                          ModelSpec, load_comparisons, markdown_table,
                                          run_comparison, synthetic_batch)
from mod_squad.analysis import build_model

DEMO_CONFIG = 'configs/mod_squad/mod-squad_vit-demo_2k_synthetic-cls-det-seg.py'
VIT = 'mmpretrain::vision_transformer/vit-base-p16_64xb64_in1k.py'
MOD_SQUAD_CLS = 'configs/mod_squad/single_task/mod-squad-vit-b-p16_64xb64_in1k.py'
UPERNET = 'mmseg::vit/vit_vit-b16_mln_upernet_8xb2-160k_ade20k-512x512.py'
RETINANET = 'mmdet::retinanet/retinanet_r18_fpn_1x_coco.py'
ARCH = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)
TINY_CLS = {
    'model.backbone.arch': dict(ARCH, _delete_=True), 'model.backbone.img_size': 32,
    'model.backbone.patch_size': 8, 'model.head.in_channels': 32,
    'model.head.hidden_dim': 64, 'model.head.num_classes': 10,
    'data_preprocessor.num_classes': 10
}
TINY_SEG = {
    'model.pretrained': None, 'model.backbone.img_size': (32, 32),
    'model.backbone.patch_size': 8, 'model.backbone.embed_dims': 32,
    'model.backbone.num_layers': 4, 'model.backbone.num_heads': 2,
    'model.backbone.out_indices': (0, 1, 2, 3),
    'model.neck.in_channels': [32] * 4, 'model.neck.out_channels': 32,
    'model.decode_head.in_channels': [32] * 4, 'model.decode_head.channels': 16,
    'model.decode_head.num_classes': 5, 'model.auxiliary_head.in_channels': 32,
    'model.auxiliary_head.channels': 16, 'model.auxiliary_head.num_classes': 5,
    'model.data_preprocessor.size': (32, 32)
}
TINY_DET = {'model.bbox_head.num_classes': 5, 'model.neck.out_channels': 32,
            'model.bbox_head.in_channels': 32, 'model.bbox_head.feat_channels': 32}
SIZES = dict(cls=(32, 32), det=(64, 64), seg=(32, 32))


def tiny_settings(**kwargs):
    return BenchmarkSettings(sizes=SIZES, warmup=1, rounds=2, progress=False, **kwargs)


@pytest.fixture
def benchmark_config(tmp_path):
    """A benchmark config of a tiny mmpretrain ViT against a tiny ModSquadViT."""
    path = tmp_path / 'tiny_benchmark.py'
    mod_squad = dict(TINY_CLS, **{'model.backbone.num_experts': 4,
                                  'model.backbone.top_k': 2,
                                  'model.backbone.router_cfg.init': 'trunc_normal'})
    path.write_text(f'comparisons = [dict(name="cls", models=['
                    f'dict(label="ViT", configs=[dict(config="{VIT}", '
                    f'cfg_options={TINY_CLS!r})]), '
                    f'dict(label="ModSquadViT", configs=[dict(config="{MOD_SQUAD_CLS}", '
                    f'cfg_options={mod_squad!r})])])]\n')
    return str(path)


def test_tool_writes_a_table_with_every_column_and_valid_json(
        load_script, benchmark_config, tmp_path):
    tool = load_script('tools/analysis_tools/benchmark.py')
    work_dir = tmp_path / 'out'
    tool.main([benchmark_config, '--sizes', 'cls=32,32', '--rounds', '2',
               '--num-warmup', '1', '--work-dir', str(work_dir)])
    report = json.loads((work_dir / 'benchmark.json').read_text())
    assert report['settings']['sizes']['cls'] == [32, 32]
    (comparison, ) = report['comparisons']
    assert comparison['baseline'] == 'ViT'
    vit, mod_squad = comparison['models']
    for model in (vit, mod_squad):
        assert set(model['metrics']) == set(METRICS)
        assert all(model['ratios'][key] > 0 for key in METRICS)
    assert all(vit['ratios'][key] == 1 for key in METRICS)
    # 4 experts of which 2 per token: fewer active than total, MoE FLOPs likewise
    assert mod_squad['metrics']['params_active'] < mod_squad['metrics']['params_total']
    assert mod_squad['metrics']['flops_active'] < mod_squad['metrics']['flops_total']
    assert vit['metrics']['flops_active'] == vit['metrics']['flops_total']
    table = (work_dir / 'benchmark.md').read_text().splitlines()
    header = next(line for line in table if line.startswith('| comparison'))
    assert [c.strip() for c in header.strip('|').split('|')][3:] == list(METRICS.values())
    rows = [line for line in table if line.startswith('| cls')]
    assert len(rows) == 2 and 'n/a' not in ''.join(rows)
    assert '(1.00x)' in rows[0]


def test_joint_model_against_a_set_of_stock_models_in_bf16():
    stock = ModelSpec('stock', [dict(config=VIT, cfg_options=TINY_CLS),
                                dict(config=RETINANET, cfg_options=TINY_DET),
                                dict(config=UPERNET, cfg_options=TINY_SEG)])
    joint = ModelSpec('joint', [DEMO_CONFIG])
    settings = BenchmarkSettings(sizes=SIZES, warmup=0, rounds=1, progress=False,
                                 memory=False, amp=True)
    result = run_comparison(Comparison('joint', [stock, joint]), settings)
    stock_result, joint_result = result.models
    assert stock_result.tasks == ['cls', 'det', 'seg']
    assert joint_result.tasks == ['cls', 'det', 'seg']
    # the deployed parameters: the sum over the three stock models, aux head dropped
    stock_params = 0
    for entry in stock.configs:
        model = build_model(ModelSpec('one', [entry]).load()[0])
        stock_params += sum(p.numel() for name, p in model.named_parameters()
                            if not name.startswith('auxiliary_head'))
    assert stock_result.metrics['params_total'] == stock_params
    demo = build_model(Config.fromfile(DEMO_CONFIG))
    assert joint_result.metrics['params_total'] == sum(
        p.numel() for name, p in demo.named_parameters() if 'auxiliary_head' not in name)
    for model in result.models:
        assert model.metrics.pop('peak_memory_mib') is None
        assert model.notes == ['peak memory not measured (memory=False)']
        assert all(v > 0 for v in model.metrics.values()), model
        assert all(model.ratios[key] > 0 for key in model.metrics)


@pytest.mark.parametrize('config,options,kind,sample_type,with_gt', [
    (VIT, TINY_CLS, 'cls', 'mmpretrain.structures.DataSample', 'gt_label'),
    (RETINANET, TINY_DET, 'det', 'mmdet.structures.DetDataSample', 'gt_instances'),
    (UPERNET, TINY_SEG, 'seg', 'mmseg.structures.SegDataSample', 'gt_sem_seg'),
])
def test_synthetic_batches_carry_the_toolbox_types(config, options, kind, sample_type,
                                                   with_gt):
    model = build_model(ModelSpec('m', [dict(config=config, cfg_options=options)])
                        .load()[0])
    for labels in (True, False):
        data = synthetic_batch(model, None, kind, (32, 48), 3, with_labels=labels)
        assert [tuple(x.shape) for x in data['inputs']] == [(3, 32, 48)] * 3
        assert all(x.dtype == torch.uint8 for x in data['inputs'])
        sample = data['data_samples'][0]
        assert f'{type(sample).__module__.split(".")[0]}.structures.' \
               f'{type(sample).__name__}' == sample_type
        assert (with_gt in sample) == labels
    # the labelled batch trains the stock model
    model.train()
    losses = model.train_step(synthetic_batch(model, None, kind, (32, 32), 2, True),
                              OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.)))
    assert all(torch.isfinite(v) for v in losses.values())


def test_table_shows_na_and_the_ratio():
    metrics = dict(dict.fromkeys(METRICS, 2.), params_total=2e6, params_active=2e6,
                   flops_total=2e9, flops_active=2e9)
    report = dict(comparisons=[dict(name='c', models=[
        dict(label='base', tasks=['cls'], metrics=metrics,
             ratios=dict.fromkeys(METRICS, 1.), notes=[]),
        dict(label='new', tasks=['cls'], metrics=dict(metrics, flops_total=None),
             ratios=dict(dict.fromkeys(METRICS, 1.5), flops_total=None),
             notes=['FLOPs n/a for task cls: RuntimeError: trace'])])])
    lines = markdown_table(report).splitlines()
    assert lines[3] == (
        '| c | new | cls | 2.00 (1.50x) | 2.00 (1.50x) | 2.00 (1.50x) | 2.00 (1.50x) '
        '| 2M (1.50x) | 2M (1.50x) | n/a | 2G (1.50x) |')
    assert lines[-1] == '- new (c): FLOPs n/a for task cls: RuntimeError: trace'


def test_errors_name_the_culprit(benchmark_config):
    cfg = Config.fromfile(benchmark_config)
    with pytest.raises(ValueError, match=r"Unknown comparisons \['det'\].*\['cls'\]"):
        load_comparisons(cfg, ['det'])
    with pytest.raises(ValueError, match="'solo' needs a baseline"):
        Comparison.from_dict(dict(name='solo', models=[dict(label='a', configs=[VIT])]))
    with pytest.raises(ValueError, match='sizes: depth='):
        BenchmarkSettings(sizes=dict(depth=(3, 3)))
    with pytest.raises(ValueError, match="'m': unknown keys \\['options'\\]"):
        ModelSpec('m', [dict(config=VIT, options={})]).load()
