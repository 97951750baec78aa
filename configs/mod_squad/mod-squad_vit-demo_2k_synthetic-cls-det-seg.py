# Joint classification + detection (RetinaNet) + segmentation (UPerNet) on the
# bundled synthetic data (tools/dataset_converters/make_synthetic.py), with a small
# ModSquadViT, on CPU in minutes. Every foreign component is built in its own scope.
custom_imports = dict(imports=['mod_squad'], allow_failed_imports=False)
default_scope = 'mod_squad'

data_root = 'data/synthetic/'
cls_classes = ('arrow', 'circle', 'crescent', 'cross', 'heart', 'hexagon',
               'pentagon', 'square', 'star', 'triangle')
det_classes = ('circle', 'triangle', 'square', 'star', 'cross')
seg_classes = ('plain', 'stripes', 'checker', 'dots', 'noise', 'waves', 'circle',
               'triangle', 'star')
embed_dims = 128
mean = [123.675, 116.28, 103.53]
std = [58.395, 57.12, 57.375]
norm_cfg = dict(type='BN', requires_grad=True)  # SyncBN on GPU clusters
det_norm_cfg = dict(type='GN', num_groups=16, requires_grad=True)  # heads from scratch

# ----------------------------------------------------------------------------- model
model = dict(
    type='ModSquadMultiTaskModel',
    backbone=dict(
        type='ModSquadViT',
        arch=dict(embed_dims=embed_dims, num_layers=6, num_heads=4,
                  feedforward_channels=4 * embed_dims),
        task_names=('cls', 'det', 'seg'),
        img_size=64,
        patch_size=8,
        num_experts=8,
        top_k=2,
        drop_path_rate=0.1,
        aux_loss_cfg=dict(mi_weight=0.0005, mi_form='heterogeneous', warmup_iters=100)),
    loss_weights=dict(cls=1.0, det=1.0, seg=1.0),
    branches=dict(
        cls=dict(
            _scope_='mmpretrain',
            type='ImageClassifier',
            data_preprocessor=dict(
                type='ClsDataPreprocessor', mean=mean, std=std, to_rgb=True,
                num_classes=len(cls_classes)),
            backbone=dict(type='mod_squad.SharedBackboneView', out_type='cls_token'),
            head=dict(
                type='LinearClsHead',
                num_classes=len(cls_classes),
                in_channels=embed_dims,
                loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
                topk=(1, 5))),
        # RetinaNet, the authors' detector: a from-scratch ViT this small and this
        # briefly trained gives RoI heads (Mask R-CNN) too little to learn from, while
        # the dense head learns within the CPU budget. Mask R-CNN is in the full recipe.
        det=dict(
            _scope_='mmdet',
            type='RetinaNet',
            data_preprocessor=dict(
                type='DetDataPreprocessor', mean=mean, std=std, bgr_to_rgb=True,
                pad_size_divisor=32),
            # stride-8 tokens -> strides 8/16 (+32 from the FPN's extra conv)
            backbone=dict(
                type='mod_squad.SharedBackboneView',
                out_type='pyramid',
                out_indices=-1,
                pyramid_scales=(1, 0.5)),
            neck=dict(
                type='FPN',
                in_channels=[embed_dims] * 2,
                out_channels=64,
                start_level=0,
                add_extra_convs='on_output',
                num_outs=3,
                norm_cfg=det_norm_cfg),
            bbox_head=dict(
                type='RetinaHead',
                num_classes=len(det_classes),
                in_channels=64,
                stacked_convs=2,
                feat_channels=64,
                norm_cfg=det_norm_cfg,
                anchor_generator=dict(
                    type='AnchorGenerator',
                    octave_base_scale=4,
                    scales_per_octave=2,
                    ratios=[0.5, 1.0, 2.0],
                    strides=[8, 16, 32]),
                bbox_coder=dict(
                    type='DeltaXYWHBBoxCoder',
                    target_means=[.0, .0, .0, .0],
                    target_stds=[1.0, 1.0, 1.0, 1.0]),
                loss_cls=dict(
                    type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                    loss_weight=1.0),
                loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
            train_cfg=dict(
                assigner=dict(
                    type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.4,
                    min_pos_iou=0, ignore_iof_thr=-1),
                sampler=dict(type='PseudoSampler'),
                allowed_border=-1,
                pos_weight=-1,
                debug=False),
            test_cfg=dict(
                nms_pre=1000,
                min_bbox_size=0,
                score_thr=0.05,
                nms=dict(type='nms', iou_threshold=0.5),
                max_per_img=100)),
        seg=dict(
            _scope_='mmseg',
            type='EncoderDecoder',
            data_preprocessor=dict(
                type='SegDataPreProcessor', mean=mean, std=std, bgr_to_rgb=True,
                pad_val=0, seg_pad_val=255, size=(128, 128)),
            backbone=dict(
                type='mod_squad.SharedBackboneView', out_type='featmap',
                out_indices=(1, 3, 5)),
            neck=dict(
                type='MultiLevelNeck', in_channels=[embed_dims] * 3,
                out_channels=embed_dims, scales=[2, 1, 0.5]),
            decode_head=dict(
                type='UPerHead',
                in_channels=[embed_dims] * 3,
                in_index=[0, 1, 2],
                pool_scales=(1, 2, 3, 6),
                channels=64,
                dropout_ratio=0.1,
                num_classes=len(seg_classes),
                norm_cfg=norm_cfg,
                align_corners=False,
                loss_decode=dict(
                    type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
            auxiliary_head=dict(
                type='FCNHead',
                in_channels=embed_dims,
                in_index=1,
                channels=32,
                num_convs=1,
                concat_input=False,
                dropout_ratio=0.1,
                num_classes=len(seg_classes),
                norm_cfg=norm_cfg,
                align_corners=False,
                loss_decode=dict(
                    type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
            train_cfg=dict(),
            test_cfg=dict(mode='whole'))))

# ------------------------------------------------------------------------------ data
cls_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=64, crop_ratio_range=(0.6, 1.0)),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
cls_test_pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
det_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
det_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
seg_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
seg_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]

cls_data = dict(
    _scope_='mmpretrain',
    type='CustomDataset',
    data_root=data_root + 'cls',
    classes=cls_classes)
det_data = dict(
    _scope_='mmdet',
    type='CocoDataset',
    data_root=data_root + 'det',
    metainfo=dict(classes=det_classes))
seg_data = dict(
    _scope_='mmseg',
    type='BaseSegDataset',
    data_root=data_root + 'seg',
    metainfo=dict(classes=seg_classes),
    img_suffix='.jpg',
    seg_map_suffix='.png',
    reduce_zero_label=True)

train_dataloader = dict(
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(
        type='TaskBatchSampler',
        batch_sizes=dict(cls=32, det=4, seg=4),
        # equal shares: on this CPU budget every task needs its iterations (the
        # authors' 15:10:5 is in the full recipe)
        ratios=dict(cls=10, det=10, seg=10)),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(
        type='HeterogeneousDataset',
        datasets=dict(
            cls=dict(
                **cls_data, ann_file='meta/train.txt', data_prefix='train',
                pipeline=cls_train_pipeline),
            det=dict(
                **det_data, ann_file='annotations/instances_train.json',
                data_prefix=dict(img='train/'), filter_cfg=dict(filter_empty_gt=True),
                pipeline=det_train_pipeline),
            seg=dict(
                **seg_data,
                data_prefix=dict(
                    img_path='images/training', seg_map_path='annotations/training'),
                pipeline=seg_train_pipeline))))


def _val_loader(dataset, batch_size):
    return dict(
        batch_size=batch_size,
        num_workers=2,
        persistent_workers=True,
        sampler=dict(type='DefaultSampler', shuffle=False),
        collate_fn=dict(type='pseudo_collate'),
        dataset=dataset)


val_dataloader = dict(
    cls=_val_loader(
        dict(**cls_data, ann_file='meta/val.txt', data_prefix='val',
             pipeline=cls_test_pipeline), 64),
    det=_val_loader(
        dict(**det_data, ann_file='annotations/instances_val.json',
             data_prefix=dict(img='val/'), test_mode=True,
             pipeline=det_test_pipeline), 8),
    seg=_val_loader(
        dict(**seg_data,
             data_prefix=dict(
                 img_path='images/validation', seg_map_path='annotations/validation'),
             pipeline=seg_test_pipeline), 8))
test_dataloader = val_dataloader
val_evaluator = dict(
    cls=dict(_scope_='mmpretrain', type='Accuracy', topk=(1, 5)),
    det=dict(
        _scope_='mmdet',
        type='CocoMetric',
        ann_file=data_root + 'det/annotations/instances_val.json',
        metric='bbox'),
    seg=dict(_scope_='mmseg', type='IoUMetric', iou_metrics=['mIoU']))
test_evaluator = val_evaluator

# ---------------------------------------------------------------------- schedule
max_iters = 2000
train_cfg = dict(type='TaskIterBasedTrainLoop', max_iters=max_iters, val_interval=1000)
val_cfg = dict(type='MultiTaskValLoop')
test_cfg = dict(type='MultiTaskTestLoop')
# lr 2e-4: at 5e-4 the from-scratch ViT's features drift too fast for box regression
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        custom_keys={
            'pos_embed': dict(decay_mult=0.),
            'cls_token': dict(decay_mult=0.),
            'task_embed': dict(decay_mult=0.),
        }),
    clip_grad=dict(max_norm=5.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=100, end=max_iters,
         eta_min=1e-5),
]

# ----------------------------------------------------------------------- runtime
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(
        type='CheckpointHook', by_epoch=False, interval=1000, max_keep_ckpts=2,
        save_best='cls/accuracy/top1', rule='greater'),
    sampler_seed=dict(type='DistSamplerSeedHook'))
custom_hooks = [dict(type='ExpertUsageHook', interval=100)]
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'))
model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)
log_processor = dict(by_epoch=False, window_size=50)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0)
