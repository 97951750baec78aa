# Mod-Squad heterogeneous multi-task training, the full recipe on real data:
# ImageNet-1K classification + COCO 2017 detection/instance segmentation (Mask R-CNN)
# + ADE20K semantic segmentation (UPerNet), one ModSquadViT-B, 8 GPUs.
# Data at the standard OpenMMLab paths: data/imagenet, data/coco,
# data/ade/ADEChallengeData2016. The structure is the demo config's
# (mod-squad_vit-demo_2k_synthetic-cls-det-seg.py); sizes, data and schedule change.
#
# From the authors' setup: sampling ratios cls:det:seg = 15:10:5 with every GPU on the
# same task in an iteration; per-GPU batches 64 / 2 / 2; loss weights 1.0 / 0.6 / 0.2;
# 16 MLP experts top-4 of hidden 768, 24 attention head-experts top-12; heterogeneous
# mutual-information loss 0.0005. Our choices where the paper is silent: AdamW with
# layer-wise LR decay 0.75, 160k iterations, patch tokens without a cls token (average
# pooling for classification) so that windowed attention serves the large detection and
# segmentation inputs as in ViTDet. Upcycle a dense ViT-B (DeiT/MAE) by setting
# model.backbone.init_cfg=dict(type='Pretrained', checkpoint=...).
_base_ = './mod-squad_vit-demo_2k_synthetic-cls-det-seg.py'

embed_dims = 768
norm_cfg = dict(type='SyncBN', requires_grad=True)  # same task on every rank: safe
mean = [123.675, 116.28, 103.53]
std = [58.395, 57.12, 57.375]

model = dict(
    backbone=dict(
        _delete_=True,
        type='ModSquadViT',
        arch='base',
        task_names=('cls', 'det', 'seg'),
        img_size=224,
        with_cls_token=False,
        out_type='avg_featmap',
        window_size=14,
        global_attn_indexes=(2, 5, 8, 11),
        drop_path_rate=0.1,
        with_cp=True,
        aux_loss_cfg=dict(mi_weight=0.0005, mi_form='heterogeneous', warmup_iters=100)),
    loss_weights=dict(cls=1.0, det=0.6, seg=0.2),
    branches=dict(
        cls=dict(
            data_preprocessor=dict(num_classes=1000),
            backbone=dict(out_type='avg_featmap'),
            head=dict(
                num_classes=1000,
                in_channels=embed_dims,
                loss=dict(
                    _delete_=True, type='LabelSmoothLoss', label_smooth_val=0.1,
                    mode='original')),
            train_cfg=dict(augments=[
                dict(type='Mixup', alpha=0.8),
                dict(type='CutMix', alpha=1.0)
            ])),
        # mmdet's Mask R-CNN FPN on ViTDet's simple pyramid (the demo uses RetinaNet)
        det=dict(
            _delete_=True,
            _scope_='mmdet',
            type='MaskRCNN',
            data_preprocessor=dict(
                type='DetDataPreprocessor', mean=mean, std=std, bgr_to_rgb=True,
                pad_mask=True, pad_size_divisor=32),
            backbone=dict(
                type='mod_squad.SharedBackboneView',
                out_type='pyramid',
                out_indices=-1,
                pyramid_scales=(4, 2, 1, 0.5)),
            neck=dict(
                type='FPN', in_channels=[embed_dims] * 4, out_channels=256, num_outs=5),
            rpn_head=dict(
                type='RPNHead',
                in_channels=256,
                feat_channels=256,
                anchor_generator=dict(
                    type='AnchorGenerator',
                    scales=[8],
                    ratios=[0.5, 1.0, 2.0],
                    strides=[4, 8, 16, 32, 64]),
                bbox_coder=dict(
                    type='DeltaXYWHBBoxCoder',
                    target_means=[.0, .0, .0, .0],
                    target_stds=[1.0, 1.0, 1.0, 1.0]),
                loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0),
                loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
            roi_head=dict(
                type='StandardRoIHead',
                bbox_roi_extractor=dict(
                    type='SingleRoIExtractor',
                    roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0),
                    out_channels=256,
                    featmap_strides=[4, 8, 16, 32]),
                bbox_head=dict(
                    type='Shared2FCBBoxHead',
                    in_channels=256,
                    fc_out_channels=1024,
                    roi_feat_size=7,
                    num_classes=80,
                    bbox_coder=dict(
                        type='DeltaXYWHBBoxCoder',
                        target_means=[0., 0., 0., 0.],
                        target_stds=[0.1, 0.1, 0.2, 0.2]),
                    reg_class_agnostic=False,
                    loss_cls=dict(
                        type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
                    loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
                mask_roi_extractor=dict(
                    type='SingleRoIExtractor',
                    roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=0),
                    out_channels=256,
                    featmap_strides=[4, 8, 16, 32]),
                mask_head=dict(
                    type='FCNMaskHead',
                    num_convs=4,
                    in_channels=256,
                    conv_out_channels=256,
                    num_classes=80,
                    loss_mask=dict(
                        type='CrossEntropyLoss', use_mask=True, loss_weight=1.0))),
            train_cfg=dict(
                rpn=dict(
                    assigner=dict(
                        type='MaxIoUAssigner', pos_iou_thr=0.7, neg_iou_thr=0.3,
                        min_pos_iou=0.3, match_low_quality=True, ignore_iof_thr=-1),
                    sampler=dict(
                        type='RandomSampler', num=256, pos_fraction=0.5,
                        neg_pos_ub=-1, add_gt_as_proposals=False),
                    allowed_border=-1,
                    pos_weight=-1,
                    debug=False),
                rpn_proposal=dict(
                    nms_pre=2000, max_per_img=1000,
                    nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0),
                rcnn=dict(
                    assigner=dict(
                        type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.5,
                        min_pos_iou=0.5, match_low_quality=True, ignore_iof_thr=-1),
                    sampler=dict(
                        type='RandomSampler', num=512, pos_fraction=0.25,
                        neg_pos_ub=-1, add_gt_as_proposals=True),
                    mask_size=28,
                    pos_weight=-1,
                    debug=False)),
            test_cfg=dict(
                rpn=dict(
                    nms_pre=1000, max_per_img=1000,
                    nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0),
                rcnn=dict(
                    score_thr=0.05,
                    nms=dict(type='nms', iou_threshold=0.5),
                    max_per_img=100,
                    mask_thr_binary=0.5))),
        seg=dict(
            data_preprocessor=dict(size=(512, 512)),
            backbone=dict(out_indices=(3, 5, 7, 11)),
            neck=dict(
                in_channels=[embed_dims] * 4, out_channels=embed_dims,
                scales=[4, 2, 1, 0.5]),
            decode_head=dict(
                in_channels=[embed_dims] * 4,
                in_index=[0, 1, 2, 3],
                channels=512,
                num_classes=150,
                norm_cfg=norm_cfg),
            auxiliary_head=dict(
                in_channels=embed_dims, in_index=3, channels=256, num_classes=150,
                norm_cfg=norm_cfg))))

# ---------------------------------------------------------------------------- data
cls_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=224, backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
cls_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=256, edge='short', backend='pillow',
         interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]
det_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(1333, 800), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
det_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(1333, 800), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
seg_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0),
         keep_ratio=True),
    dict(type='RandomCrop', crop_size=(512, 512), cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
seg_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
cls_data = dict(_scope_='mmpretrain', type='ImageNet', data_root='data/imagenet')
det_data = dict(_scope_='mmdet', type='CocoDataset', data_root='data/coco/')
seg_data = dict(_scope_='mmseg', type='ADE20KDataset',
                data_root='data/ade/ADEChallengeData2016')

train_dataloader = dict(
    num_workers=8,
    batch_sampler=dict(
        batch_sizes=dict(cls=64, det=2, seg=2), ratios=dict(cls=15, det=10, seg=5)),
    dataset=dict(
        datasets=dict(
            _delete_=True,
            cls=dict(**cls_data, split='train', pipeline=cls_train_pipeline),
            det=dict(
                **det_data, ann_file='annotations/instances_train2017.json',
                data_prefix=dict(img='train2017/'),
                filter_cfg=dict(filter_empty_gt=True, min_size=32),
                pipeline=det_train_pipeline),
            seg=dict(
                **seg_data,
                data_prefix=dict(
                    img_path='images/training', seg_map_path='annotations/training'),
                pipeline=seg_train_pipeline))))
val_dataloader = dict(
    _delete_=True,
    cls=dict(
        batch_size=64, num_workers=8, persistent_workers=True,
        sampler=dict(type='DefaultSampler', shuffle=False),
        collate_fn=dict(type='pseudo_collate'),
        dataset=dict(**cls_data, split='val', pipeline=cls_test_pipeline)),
    det=dict(
        batch_size=1, num_workers=2, persistent_workers=True,
        sampler=dict(type='DefaultSampler', shuffle=False),
        collate_fn=dict(type='pseudo_collate'),
        dataset=dict(
            **det_data, ann_file='annotations/instances_val2017.json',
            data_prefix=dict(img='val2017/'), test_mode=True,
            pipeline=det_test_pipeline)),
    seg=dict(
        batch_size=1, num_workers=4, persistent_workers=True,
        sampler=dict(type='DefaultSampler', shuffle=False),
        collate_fn=dict(type='pseudo_collate'),
        dataset=dict(
            **seg_data,
            data_prefix=dict(
                img_path='images/validation', seg_map_path='annotations/validation'),
            pipeline=seg_test_pipeline)))
test_dataloader = val_dataloader
val_evaluator = dict(
    det=dict(
        ann_file='data/coco/annotations/instances_val2017.json', metric=['bbox', 'segm']))
test_evaluator = val_evaluator

# ------------------------------------------------------------------------ schedule
max_iters = 160000
train_cfg = dict(max_iters=max_iters, val_interval=10000)
optim_wrapper = dict(
    type='AmpOptimWrapper',
    constructor='mmpretrain.LearningRateDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(layer_decay_rate=0.75),
    clip_grad=dict(max_norm=1.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=1500),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=1500, end=max_iters,
         eta_min=1e-6),
]
default_hooks = dict(
    logger=dict(interval=50),
    checkpoint=dict(interval=10000, max_keep_ckpts=3, save_best='det/coco/bbox_mAP'))
custom_hooks = [dict(type='ExpertUsageHook', interval=500)]
env_cfg = dict(dist_cfg=dict(backend='nccl'))
