"""ModSquadMultiTaskModel: joint steps over stock branches, routing of batches."""
import copy

import pytest
import torch
from mmengine.dataset import pseudo_collate
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope

from mod_squad.registry import DATASETS, MODELS

TASKS = ('cls', 'det', 'seg')


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
    model = build_model(demo_cfg)
    optim_wrapper = build_optim_wrapper(model, demo_cfg.optim_wrapper)
    expected = dict(cls={'cls.loss'},
                    det={'det.loss_rpn_cls', 'det.loss_cls', 'det.loss_mask'},
                    seg={'seg.decode.loss_ce', 'seg.aux.loss_ce'})
    for task in TASKS:
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
        router_rows = model.backbone.layers[1].ffn.router.weight
        assert router_rows.shape[0] == 3


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


def test_layer_wise_lr_decay_with_mmpretrain_constructor(demo_cfg):
    model = build_model(demo_cfg)
    optim_wrapper = build_optim_wrapper(
        model,
        dict(
            optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
            constructor='mmpretrain.LearningRateDecayOptimWrapperConstructor',
            paramwise_cfg=dict(layer_decay_rate=0.5)))
    lr = {g['param_name']: g['lr'] for g in optim_wrapper.optimizer.param_groups}
    # 6 blocks: depths 0 (stem) .. 7 (branches); scale = 0.5 ** (7 - depth)
    assert lr['backbone.pos_embed'] == pytest.approx(1e-3 * 0.5**7)
    assert lr['backbone.layers.5.ln1.weight'] == pytest.approx(1e-3 * 0.5)
    assert lr['branches.det.neck.lateral_convs.0.conv.weight'] == pytest.approx(1e-3)


def test_one_stage_detector_branch_and_batch_augments(demo_cfg):
    """RetinaNet as the det branch; Mixup in the cls branch's stock preprocessor."""
    det = demo_cfg.model.branches.det
    demo_cfg.model.branches.det = dict(
        _scope_='mmdet',
        type='RetinaNet',
        data_preprocessor=det.data_preprocessor,
        backbone=det.backbone,
        neck=dict(det.neck, start_level=0, add_extra_convs='on_input', num_outs=4),
        bbox_head=dict(
            type='RetinaHead',
            num_classes=5,
            in_channels=64,
            stacked_convs=1,
            feat_channels=64,
            anchor_generator=dict(
                type='AnchorGenerator', octave_base_scale=4, scales_per_octave=1,
                ratios=[1.0], strides=[4, 8, 16, 32]),
            bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[.0] * 4,
                            target_stds=[1.0] * 4),
            loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                          loss_weight=1.0),
            loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
        train_cfg=dict(
            assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.4,
                          min_pos_iou=0, ignore_iof_thr=-1),
            sampler=dict(type='PseudoSampler'), allowed_border=-1, pos_weight=-1,
            debug=False),
        test_cfg=dict(nms_pre=100, min_bbox_size=0, score_thr=0.05,
                      nms=dict(type='nms', iou_threshold=0.5), max_per_img=20))
    demo_cfg.model.branches.cls.train_cfg = dict(augments=dict(type='Mixup', alpha=1.))
    model = build_model(demo_cfg)
    optim_wrapper = build_optim_wrapper(model, demo_cfg.optim_wrapper)
    log_vars = model.train_step(task_batch(demo_cfg, 'det'), optim_wrapper)
    assert {'det.loss_cls', 'det.loss_bbox'} <= set(log_vars)
    batch = model.data_preprocessor(task_batch(demo_cfg, 'cls'), True)
    scores = torch.stack([s.gt_score for s in batch['data_samples']])
    assert scores.shape == (2, 10)  # mixed one-hot targets from mmpretrain's Mixup
    torch.testing.assert_close(scores.sum(1), torch.ones(2))
    model.eval()
    with torch.no_grad():
        results = model.val_step(task_batch(demo_cfg, 'det'))
    assert results[0].pred_instances.bboxes.shape[-1] == 4
