"""ModSquadMultiTaskModel: joint steps over stock branches, routing of batches."""
import copy

import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope

from mod_squad.registry import DATASETS, MODELS

TASKS = ('cls', 'det', 'seg')
FULL_RECIPE = ('configs/mod_squad/'
               'mod-squad_vit-b-p16_mask-rcnn_upernet_8xb64-2-2-160k_in1k-coco-ade20k.py')


def build_model(cfg):
    init_default_scope('mod_squad')
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model


def task_batch(cfg, task, size=2):
    dataset = DATASETS.build(copy.deepcopy(cfg.train_dataloader.dataset.datasets[task]))
    return pseudo_collate([dict(dataset[i], task=task) for i in range(size)])


def snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def changed(before, module):
    return {n for n, p in module.named_parameters() if not torch.equal(before[n], p)}


def test_joint_steps_train_only_the_running_branch(demo_cfg):
    """Each step trains its task's branch, routers and task embedding and the shared
    experts; the other tasks' branches, routers and embeddings stay exactly as they
    are, also in the second round, when AdamW has momentum for all of them."""
    model = build_model(demo_cfg)
    optim_wrapper = build_optim_wrapper(model, demo_cfg.optim_wrapper)
    expected = dict(cls={'cls.loss'},
                    det={'det.loss_cls', 'det.loss_bbox'},
                    seg={'seg.decode.loss_ce', 'seg.aux.loss_ce'})
    for task in TASKS * 2:
        batch = task_batch(demo_cfg, task)
        branches = {t: snapshot(model.branches[t]) for t in TASKS}
        backbone = snapshot(model.backbone)
        log_vars = model.train_step(batch, optim_wrapper)
        assert expected[task] <= set(log_vars)
        assert 'loss_moe_mi' in log_vars
        assert all(k.startswith(f'{task}.') for k in log_vars
                   if k not in ('loss', 'loss_moe_mi'))
        assert all(torch.isfinite(torch.as_tensor(v)) for v in log_vars.values())
        for other in TASKS:
            moved = changed(branches[other], model.branches[other])
            if other == task:
                assert moved, f'branch {task} did not train'
            else:
                assert not moved, f'{task} step changed branch {other}: {moved}'
        moved = changed(backbone, model.backbone)
        assert any('experts' in n for n in moved)
        per_task = {t: {n for n in backbone if n.endswith(f'.{t}')} for t in TASKS}
        # its task embedding, and a router weight and bias in each (MoE) block
        assert len(per_task[task]) == 1 + 2 * len(model.backbone.layers)
        assert per_task[task] <= moved, per_task[task] - moved
        for other in set(TASKS) - {task}:
            assert not per_task[other] & moved, f'{task} step moved {other}\'s routers'


def test_predict_returns_each_toolboxs_data_samples(demo_cfg):
    from mmdet.structures import DetDataSample
    from mmpretrain.structures import DataSample
    from mmseg.structures import SegDataSample
    model = build_model(demo_cfg).eval()
    kinds = dict(cls=DataSample, det=DetDataSample, seg=SegDataSample)
    for task in TASKS:
        with torch.no_grad():
            outputs = model.val_step(task_batch(demo_cfg, task))
        assert len(outputs) == 2 and all(isinstance(o, kinds[task]) for o in outputs)


def test_tensor_mode_returns_each_branchs_raw_outputs(demo_cfg):
    """mode='tensor' gives each stock model's own raw outputs: logits (B, classes)
    for mmpretrain's ImageClassifier (which has no ``_forward``), per-level class
    scores and boxes for RetinaNet, (B, classes, h, w) for mmseg's EncoderDecoder."""
    model = build_model(demo_cfg).eval()
    outputs = {}
    for task in TASKS:
        batch = model.data_preprocessor(task_batch(demo_cfg, task), False)
        with torch.no_grad():
            outputs[task] = model(**batch, mode='tensor')
            expected = model.branches[task](batch['inputs'], batch['data_samples'],
                                            mode='tensor')
        flat = [outputs[task]] if task != 'det' else [t for out in outputs[task] for t in out]
        flat_expected = [expected] if task != 'det' else [t for out in expected for t in out]
        assert len(flat) == len(flat_expected)
        assert all(torch.equal(a, b) for a, b in zip(flat, flat_expected))
    assert outputs['cls'].dim() == 2 and outputs['cls'].shape[0] == 2
    assert len(outputs['det']) == 2  # (class scores, boxes), one tensor per level each
    assert outputs['seg'].dim() == 4 and outputs['seg'].shape[0] == 2


def test_loss_weights_scale_each_tasks_losses(demo_cfg):
    demo_cfg.model.loss_weights = dict(cls=1.0, det=1.0, seg=0.25)
    model = build_model(demo_cfg)
    batch = model.data_preprocessor(task_batch(demo_cfg, 'seg'), True)
    torch.manual_seed(0)
    weighted = model(**batch, mode='loss')
    model.loss_weights['seg'] = 1.0
    torch.manual_seed(0)
    plain = model(**batch, mode='loss')
    torch.testing.assert_close(weighted['seg.decode.loss_ce'],
                               0.25 * plain['seg.decode.loss_ce'])
    torch.testing.assert_close(weighted['seg.decode.acc_seg'],
                               plain['seg.decode.acc_seg'])


def test_batches_must_hold_one_known_task(demo_cfg):
    model = build_model(demo_cfg)
    batch = task_batch(demo_cfg, 'cls')
    with pytest.raises(ValueError, match='one task'):
        model.data_preprocessor(dict(batch, task=['cls', 'seg']))
    with pytest.raises(KeyError, match="task 'depth'.*branches"):
        model.data_preprocessor(dict(batch, task='depth'))
    with pytest.raises(KeyError, match='no "task"'):
        model.data_preprocessor({k: v for k, v in batch.items() if k != 'task'})


def test_configuration_errors_name_the_culprit(demo_cfg):
    cfg = copy.deepcopy(demo_cfg.model)
    cfg.loss_weights = dict(depth=1.0)
    with pytest.raises(ValueError, match=r"loss_weights for tasks \['depth'\]"):
        MODELS.build(cfg)
    cfg = copy.deepcopy(demo_cfg.model)
    cfg.backbone.task_names = ('cls', 'det')
    with pytest.raises(ValueError, match=r"Branches \['seg'\] have no router"):
        MODELS.build(cfg)
    cfg = copy.deepcopy(demo_cfg.model)
    cfg.branches.cls.backbone = dict(_scope_='mmpretrain', type='ResNet', depth=18)
    with pytest.raises(TypeError, match="branch 'cls' must be"):
        MODELS.build(cfg)


def test_shared_backbone_has_no_out_type_of_its_own(demo_cfg):
    model = build_model(demo_cfg)
    assert model.backbone.outputs.out_type == 'raw'
    assert not list(model.backbone.outputs.parameters())
    demo_cfg.model.backbone.out_type = 'avg_featmap'
    with pytest.raises(ValueError, match="model.backbone.out_type='avg_featmap' is not "
                       "used: each branch's SharedBackboneView shapes its own outputs"):
        MODELS.build(demo_cfg.model)


@pytest.mark.parametrize('view,neck,message', [
    (dict(out_type='cls_token'), None,
     r"Branch 'det': its SharedBackboneView \(out_type='cls_token', out_indices=\[5\]\) "
     r'gives 1 \(B, C\) vector\(s\), but RetinaNet needs feature maps'),
    (dict(out_type='featmap', out_indices=(3, 5)), None,
     r"\(out_type='featmap', out_indices=\[3, 5\]\) gives 2 map\(s\) of one stride, "
     r'but its FPN neck \(in_channels=\[128, 128\]\) builds its pyramid from maps '
     r'whose strides double'),
    (dict(out_type='pyramid', pyramid_scales=(2, 1, 0.5)), None,
     r'gives 3 maps at scales \(2, 1, 0.5\), but its FPN neck '
     r'\(in_channels=\[128, 128\]\) takes 2'),
    (None, dict(in_channels=[64, 64]),
     r'gives 2 maps at scales \(1, 0.5\) of 128 channels, but its FPN neck '
     r'\(in_channels=\[64, 64\]\) expects other widths: set in_channels=\[128, 128\]'),
], ids=['vectors_into_detector', 'one_stride_into_fpn', 'too_many_maps', 'widths'])
def test_branch_neck_must_take_what_its_view_gives(demo_cfg, view, neck, message):
    """Caught at construction, instead of an empty AssertionError inside mmdet's FPN
    or a detector that trains at the wrong strides."""
    det = demo_cfg.model.branches.det
    if view is not None:
        det.backbone = dict(type='mod_squad.SharedBackboneView', **view)
    det.neck.update(neck or {})
    with pytest.raises(ValueError, match=message):
        MODELS.build(demo_cfg.model)


def test_frozen_stages_of_the_shared_backbone(demo_cfg):
    """The stem, task embeddings and first blocks (with every task's routers) of the
    shared backbone stay bit-identical through AdamW steps with weight decay of every
    task, and in eval mode; the rest trains."""
    demo_cfg.model.backbone.frozen_stages = 3
    model = build_model(demo_cfg)
    backbone = model.backbone
    frozen = {n for n, p in backbone.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in backbone.named_parameters() if n.startswith(
        ('patch_embed.', 'pos_embed', 'cls_token', 'task_embed.', 'layers.0.',
         'layers.1.', 'layers.2.'))}
    optim_wrapper = build_optim_wrapper(model, demo_cfg.optim_wrapper)
    assert optim_wrapper.optimizer.defaults['weight_decay'] > 0
    before = snapshot(backbone)
    for task in TASKS:
        model.train_step(task_batch(demo_cfg, task), optim_wrapper)
    moved = changed(before, backbone)
    assert not frozen & moved
    assert 'layers.3.ln1.weight' in moved and 'layers.5.ffn.experts.w1' in moved
    model.train()
    assert [layer.training for layer in backbone.layers] == [False] * 3 + [True] * 3


def test_two_stage_detector_with_masks_and_batch_augments(demo_cfg, synthetic):
    """The full recipe's Mask R-CNN as the det branch (box and mask losses, masks
    predicted); Mixup in the cls branch's stock preprocessor."""
    det = Config.fromfile(FULL_RECIPE).model.branches.det
    assert det.type == 'MaskRCNN'
    det.neck.in_channels = [demo_cfg.embed_dims] * 4
    det.roi_head.bbox_head.num_classes = len(synthetic.DET_CLASSES)
    det.roi_head.mask_head.num_classes = len(synthetic.DET_CLASSES)
    demo_cfg.model.branches.det = det
    load_annotations = demo_cfg.train_dataloader.dataset.datasets.det.pipeline[1]
    assert load_annotations.type == 'LoadAnnotations'
    load_annotations.with_mask = True
    demo_cfg.model.branches.cls.train_cfg = dict(augments=dict(type='Mixup', alpha=1.))
    model = build_model(demo_cfg)
    optim_wrapper = build_optim_wrapper(model, demo_cfg.optim_wrapper)
    log_vars = model.train_step(task_batch(demo_cfg, 'det'), optim_wrapper)
    assert {'det.loss_rpn_cls', 'det.loss_cls', 'det.loss_bbox',
            'det.loss_mask'} <= set(log_vars)
    assert all(torch.isfinite(torch.as_tensor(v)) for v in log_vars.values())
    batch = model.data_preprocessor(task_batch(demo_cfg, 'cls'), True)
    scores = torch.stack([s.gt_score for s in batch['data_samples']])
    assert scores.shape == (2, 10)  # mixed one-hot targets from mmpretrain's Mixup
    torch.testing.assert_close(scores.sum(1), torch.ones(2))
    model.eval()
    with torch.no_grad():
        results = model.val_step(task_batch(demo_cfg, 'det'))
    pred = results[0].pred_instances
    assert pred.bboxes.shape[-1] == 4
    assert pred.masks.shape[1:] == results[0].ori_shape


def test_amp_optim_wrapper_runs_experts_in_low_precision_and_routers_in_fp32(
        demo_cfg, monkeypatch):
    """What ``tools/train.py --amp`` sets up (mmengine's AmpOptimWrapper), here with
    CPU bf16 autocast: every task's joint step runs the experts in bf16 and the
    routers in fp32, and trains with finite losses."""
    from mmengine.optim.optimizer import amp_optimizer_wrapper
    monkeypatch.setattr(amp_optimizer_wrapper, 'is_cuda_available', lambda: True)
    model = build_model(demo_cfg)
    demo_cfg.optim_wrapper.update(type='AmpOptimWrapper', dtype='bfloat16',
                                  loss_scale='dynamic')
    optim_wrapper = build_optim_wrapper(model, demo_cfg.optim_wrapper)
    ffn = model.backbone.layers[1].ffn
    dtypes = []
    ffn.router.register_forward_hook(
        lambda m, args, out: dtypes.append(('router', out.logits.dtype)))
    ffn.experts.register_forward_hook(lambda m, args, out: dtypes.append(('experts', out.dtype)))
    for task in TASKS:
        dtypes.clear()
        before = snapshot(model.branches[task])
        log_vars = model.train_step(task_batch(demo_cfg, task), optim_wrapper)
        assert set(dtypes) == {('router', torch.float32), ('experts', torch.bfloat16)}
        assert all(torch.isfinite(torch.as_tensor(v)) for v in log_vars.values())
        assert changed(before, model.branches[task])


def test_init_weights_applies_every_branchs_init_cfg(demo_cfg):
    """The toolboxes' head initialisations run (RetinaNet's prior on the class
    logits, Normal(0.01) for mmpretrain's and mmseg's classifiers), not torch's
    defaults, which are several times wider."""
    model = build_model(demo_cfg)
    prior = -torch.log(torch.tensor((1 - 0.01) / 0.01))
    retina_cls = model.branches['det'].bbox_head.retina_cls
    torch.testing.assert_close(retina_cls.bias, prior.expand_as(retina_cls.bias))
    assert model.branches['cls'].head.fc.weight.std() < 0.02
    assert model.branches['seg'].decode_head.conv_seg.weight.std() < 0.02
