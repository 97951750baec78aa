# ImageNet-1K classification + COCO 2017 instances (boxes and masks) + ADE20K semantic
# segmentation at the standard OpenMMLab paths: data/imagenet, data/coco,
# data/ade/ADEChallengeData2016.
# Each task's pipelines are their own variables, as in the stock dataset bases: lists
# are replaced, not merged, so a config that changes one task's pipeline sets it where
# it is used and inherits the rest, e.g.
# train_dataloader = dict(dataset=dict(datasets=dict(det=dict(pipeline=[...]))))
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
seg_data = dict(
    _scope_='mmseg', type='ADE20KDataset', data_root='data/ade/ADEChallengeData2016')

train_dataloader = dict(
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(
        type='TaskBatchSampler',
        # the authors' per-GPU batches and per-iteration task shares
        batch_sizes=dict(cls=64, det=2, seg=2),
        ratios=dict(cls=15, det=10, seg=5)),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(
        type='HeterogeneousDataset',
        datasets=dict(
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


def _val_loader(dataset, batch_size, num_workers):
    return dict(
        batch_size=batch_size,
        num_workers=num_workers,
        persistent_workers=True,
        sampler=dict(type='DefaultSampler', shuffle=False),
        collate_fn=dict(type='pseudo_collate'),
        dataset=dataset)


# one dataloader and one evaluator per task (MultiTaskValLoop / MultiTaskTestLoop)
val_dataloader = dict(
    cls=_val_loader(
        dict(**cls_data, split='val', pipeline=cls_test_pipeline), 64, 8),
    det=_val_loader(
        dict(**det_data, ann_file='annotations/instances_val2017.json',
             data_prefix=dict(img='val2017/'), test_mode=True,
             pipeline=det_test_pipeline), 1, 2),
    seg=_val_loader(
        dict(**seg_data,
             data_prefix=dict(
                 img_path='images/validation', seg_map_path='annotations/validation'),
             pipeline=seg_test_pipeline), 1, 4))
test_dataloader = val_dataloader
val_evaluator = dict(
    cls=dict(_scope_='mmpretrain', type='Accuracy', topk=(1, 5)),
    det=dict(
        _scope_='mmdet',
        type='CocoMetric',
        ann_file='data/coco/annotations/instances_val2017.json',
        metric=['bbox', 'segm']),
    seg=dict(_scope_='mmseg', type='IoUMetric', iou_metrics=['mIoU']))
test_evaluator = val_evaluator
