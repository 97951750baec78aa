"""Extracting a task of a multi-task model into a stock single-task model: exact
outputs when the dropped experts carry none of the task's routing (bit-exact with
routing by the router bias, to float summation order with token-dependent routing);
the written config + checkpoint run through the stock inferencers and the stock
test loop, with fewer parameters; clear errors."""
import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner
from conftest import DEMO_CONFIG, DEMO_DATA_ROOT, retarget
from torch.utils._pytree import tree_flatten

from mod_squad.analysis import UsageReport, build_model, count_parameters
from mod_squad.analysis.extraction import (build_stock_model, extract_task_model,
                                           select_experts, task_dataset_meta,
                                           task_routed_layers, task_usage)
from mod_squad.moe import ExpertSelection, MoAttention, reset_expert_usage

TASKS = ('cls', 'det', 'seg')
# the demo backbone: 8 experts per layer, MoA top-4 on even blocks, MLP top-2 on odd
KEEP = dict(attn=[0, 1, 2, 3, 4, 6], mlp=[0, 2, 3, 5])
NO_WORKERS = {f'{split}_dataloader.{task}.{key}': value
              for split in ('val', 'test') for task in TASKS
              for key, value in (('num_workers', 0), ('persistent_workers', False))}


@pytest.fixture
def cfg(demo_cfg):
    demo_cfg.merge_from_dict(NO_WORKERS)
    return demo_cfg


def route_to_kept(model, task, token_dependent: bool, seed: int = 0):
    """``task``'s routers give the experts outside :data:`KEEP` the logit -inf (no
    routing mass, never picked); the kept ones a random bias and, if
    ``token_dependent``, random weights. Returns the kept sets by layer."""
    generator = torch.Generator().manual_seed(seed)
    kept = {}
    with torch.no_grad():
        for name, layer in task_routed_layers(model, task).items():
            kept[name] = KEEP['attn' if isinstance(layer, MoAttention) else 'mlp']
            router = layer.router
            weight = router.weight[task]
            weight.copy_(torch.randn(weight.shape, generator=generator)
                         if token_dependent else torch.zeros_like(weight))
            bias = torch.full((layer.num_experts, ), float('-inf'))
            bias[kept[name]] = torch.randn(len(kept[name]), generator=generator)
            router.bias[task].copy_(bias)
    return kept


def outputs(model, inputs):
    """Flat tensor-mode outputs of a stock model (or a branch)."""
    with torch.no_grad():
        return tree_flatten(model(inputs, mode='tensor'))[0]


@pytest.mark.parametrize('task', TASKS)
def test_extracted_model_equals_the_joint_model_exactly_with_bias_routing(cfg, task):
    # Router weights 0: the logits are the biases exactly, the softmax over the
    # kept experts equals the one over all (the others are exp(-inf) = 0), so the
    # same experts run on the same tokens with the same gates: bit-exact.
    model = build_model(cfg)
    kept = route_to_kept(model, task, token_dependent=False)
    extracted = extract_task_model(cfg, model, task, kept)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    full = outputs(model.branches[task], x)
    small = outputs(extracted.model, x)
    assert len(full) == len(small) > 0
    for a, b in zip(full, small):
        assert a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.parametrize('task', ('det', 'seg'))
def test_extracted_model_equals_the_joint_model_to_float_summation_order(cfg, task):
    # Token-dependent routing: the router's x @ W over 8 or 6 / 4 columns sums in
    # another order, the logits differ in the last bits; the kept sets come from
    # the usage of a forward (threshold 0: every expert that took a pick).
    model = build_model(cfg)
    kept = route_to_kept(model, task, token_dependent=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    reset_expert_usage(model)
    full = outputs(model.branches[task], x)
    report = UsageReport.from_model(model, [task])
    selected = select_experts(model, task, task_usage(report, model, task),
                              ExpertSelection(threshold=0.))
    assert selected == kept
    extracted = extract_task_model(cfg, model, task, selected)
    assert extracted.top_k == {
        name: 4 if 'attn' in name else 2 for name in kept}
    for a, b in zip(full, outputs(extracted.model, x)):
        assert a.dtype == b.dtype
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5 * float(a.abs().max()))
    # the dropped experts and the other tasks' routers are gone
    backbone = extracted.model.backbone
    assert backbone.task_names == (task, )
    layers = backbone.routed_layers().values()
    assert [layer.num_experts for layer in layers] == [6, 4] * 3
    counts = count_parameters(extracted.model, task)
    joint = count_parameters(model, task)
    assert counts.total < joint.task < joint.total
    # the same k experts per token run; the routers lost the dropped columns
    # (weight (C, E) and bias (E,), C = 128): 3 MoAs 8 -> 6, 3 MLPs 8 -> 4
    assert joint.active - counts.active == (128 + 1) * (3 * 2 + 3 * 4)


@pytest.fixture(scope='module')
def written(tmp_path_factory, synthetic_root):
    """Every task extracted from an initialised demo model (its routing forced),
    written with the tool's ``save``: task -> paths; plus the joint metrics."""
    cfg = Config(retarget(Config.fromfile(DEMO_CONFIG).to_dict(), DEMO_DATA_ROOT,
                          f'{synthetic_root}/'))
    cfg.merge_from_dict(NO_WORKERS)
    model = build_model(cfg)
    out = tmp_path_factory.mktemp('extracted')
    paths = {}
    for task in TASKS:
        kept = route_to_kept(model, task, token_dependent=False)
        extracted = extract_task_model(cfg, model, task, kept,
                                       dataset_meta=task_dataset_meta(cfg, task))
        paths[task] = extracted.save(str(out))
    checkpoint = out / 'joint.pth'
    torch.save(dict(state_dict=model.state_dict()), checkpoint)
    return cfg, model, checkpoint, paths


def classes_of(cfg, task):
    return cfg.val_dataloader[task].dataset.metainfo.classes


def image_of(cfg, task):
    """The path of the first val image of ``task``."""
    from mod_squad.datasets import with_checked_dataset
    dataset = with_checked_dataset(task, cfg.val_dataloader[task])['dataset']
    return dataset.get_data_info(0)['img_path']


def test_checkpoint_loads_weights_only_with_plain_meta(written):
    cfg, _, _, paths = written
    checkpoint = torch.load(paths['det']['checkpoint'], weights_only=True)
    assert checkpoint['meta']['dataset_meta']['classes'] == classes_of(cfg, 'det')
    assert checkpoint['meta']['mod_squad']['kept']['backbone.layers.1.ffn'] == KEEP['mlp']
    assert all(key.startswith(('backbone.', 'neck.', 'bbox_head.', 'data_preprocessor.'))
               for key in checkpoint['state_dict'])
    config = Config.fromfile(paths['det']['config'])
    assert config.default_scope == 'mmdet' and config.model.type == 'RetinaNet'
    assert '_scope_' not in config.pretty_text
    backbone = config.model.backbone
    assert backbone.type == 'mod_squad.ModSquadViT' and backbone.task_names == ('det', )
    assert backbone.num_experts == [None, 4, None, 4, None, 4]
    assert backbone.num_attn_experts == [6, None, 6, None, 6, None]
    assert backbone.expert_hidden == 256 and backbone.out_type == 'pyramid'


def test_det_model_predicts_through_det_inferencer(written):
    from mmdet.apis import DetInferencer
    cfg, model, _, paths = written
    inferencer = DetInferencer(paths['det']['config'], paths['det']['checkpoint'],
                               device='cpu', show_progress=False)
    assert inferencer.model.dataset_meta['classes'] == classes_of(cfg, 'det')
    result = inferencer(image_of(cfg, 'det'), return_datasamples=True)
    pred = result['predictions'][0].pred_instances
    # the same image through the joint model's det branch
    from mod_squad.datasets import with_checked_dataset
    loader = Runner.build_dataloader(with_checked_dataset('det', cfg.val_dataloader.det))
    batch = next(iter(loader))
    batch = {key: batch[key][:1] for key in ('inputs', 'data_samples')}
    with torch.no_grad():
        joint = model.test_step(dict(batch, task='det'))[0].pred_instances
    assert len(pred) == len(joint)
    torch.testing.assert_close(pred.scores, joint.scores)


def test_seg_model_predicts_through_mmseg_inferencer(written):
    from mmseg.apis import MMSegInferencer
    cfg, _, _, paths = written
    inferencer = MMSegInferencer(paths['seg']['config'], paths['seg']['checkpoint'],
                                 device='cpu')
    assert inferencer.model.dataset_meta['classes'] == classes_of(cfg, 'seg')
    result = inferencer(image_of(cfg, 'seg'), return_datasamples=True)
    assert result.pred_sem_seg.data.shape[-2:] == (128, 128)


def test_cls_model_predicts_through_image_classification_inferencer(written):
    from mmpretrain.apis import ImageClassificationInferencer
    from mmengine.registry import DefaultScope
    cfg, _, _, paths = written
    # mmpretrain's inferencer builds its pipeline in the current default scope: in a
    # fresh process none, here the previous test's
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        inferencer = ImageClassificationInferencer(
            paths['cls']['config'], pretrained=paths['cls']['checkpoint'],
            device='cpu')
        (result, ) = inferencer(image_of(cfg, 'cls'))
    assert result['pred_class'] in cfg.val_dataloader.cls.dataset.classes
    assert len(result['pred_scores']) == 10


def test_stock_test_loop_gives_the_joint_metrics(written, tmp_path, load_script):
    cfg, _, checkpoint, paths = written
    joint_cfg = tmp_path / 'joint.py'
    cfg.dump(str(joint_cfg))
    joint = load_script('tools/test.py').main(
        [str(joint_cfg), str(checkpoint), '--work-dir', str(tmp_path / 'joint')])
    for task in ('cls', 'seg'):
        config = Config.fromfile(paths[task]['config'])
        config.work_dir = str(tmp_path / task)
        config.load_from = paths[task]['checkpoint']
        metrics = Runner.from_cfg(config).test()
        assert metrics and all(joint[f'{task}/{key}'] == value
                               for key, value in metrics.items())


def test_errors_name_the_culprit(cfg):
    model = build_model(cfg)
    kept = route_to_kept(model, 'det', token_dependent=False)
    with pytest.raises(ValueError,
                       match=r"Unknown task 'depth'.*\['cls', 'det', 'seg'\]"):
        extract_task_model(cfg, model, 'depth', kept)
    few = dict(kept, **{'backbone.layers.1.ffn': [3]})
    with pytest.raises(ValueError, match=r"'backbone.layers.1.ffn': 1 kept experts \[3\] "
                       r"are fewer than the k=2"):
        extract_task_model(cfg, model, 'det', few)
    with pytest.raises(ValueError, match=r"missing \['backbone.layers.5.ffn'\]"):
        extract_task_model(cfg, model, 'det', {
            k: v for k, v in kept.items() if k != 'backbone.layers.5.ffn'})
    with pytest.raises(ValueError, match=r'fewer than the k=5'):
        extract_task_model(cfg, model, 'det', kept, top_k=dict(mlp=5))
    no_det = {k: v for k, v in model.state_dict().items()
              if not k.endswith('.det') and not k.startswith('branches.det.')}
    with pytest.raises(ValueError,
                       match=r"no weights for task 'det'.*tasks \['cls', 'seg'\]"):
        extract_task_model(cfg, model, 'det', kept, state_dict=no_det)
    with pytest.raises(ValueError, match="no 'expert_usage_running'"):
        task_usage({}, model, 'det')


def test_tool_selects_writes_and_reports(cfg, tmp_path, load_script, capsys):
    tool = load_script('tools/model_converters/extract_task_model.py')
    model = build_model(cfg)
    kept = route_to_kept(model, 'det', token_dependent=True)
    config, checkpoint = tmp_path / 'demo.py', tmp_path / 'joint.pth'
    cfg.dump(str(config))
    torch.save(dict(state_dict=model.state_dict()), checkpoint)
    # no running usage in the checkpoint: 'auto' runs the val split
    results = tool.main([str(config), str(checkpoint), '--task', 'det', '--out-dir',
                         str(tmp_path / 'out'), '--threshold', '0'])
    extracted, paths = results['det']
    assert extracted.kept == kept
    out = capsys.readouterr().out
    assert 'backbone.layers.1.ffn' in out and '100.0%' in out and 'parameters' in out
    assert build_stock_model(Config.fromfile(paths['config'])) is not None
    # a lower k in the extracted model
    results = tool.main([str(config), str(checkpoint), '--task', 'det', '--out-dir',
                         str(tmp_path / 'k1'), '--threshold', '0', '--top-k', '1'])
    assert set(results['det'][0].top_k.values()) == {1, 4}
