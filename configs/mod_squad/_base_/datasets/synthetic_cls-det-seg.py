# The bundled synthetic data (tools/dataset_converters/make_synthetic.py) in the real
# on-disk layouts: ImageNet-style classification, COCO-style detection, ADE20K-style
# segmentation.
# Each task's pipelines are their own variables, as in the stock dataset bases: lists
# are replaced, not merged, so a config that changes one task's pipeline sets it where
# it is used and inherits the rest, e.g.
# train_dataloader = dict(dataset=dict(datasets=dict(det=dict(pipeline=[...]))))
data_root = 'data/synthetic/'
cls_classes = ('arrow', 'circle', 'crescent', 'cross', 'heart', 'hexagon',
               'pentagon', 'square', 'star', 'triangle')
det_classes = ('circle', 'triangle', 'square', 'star', 'cross')
seg_classes = ('plain', 'stripes', 'checker', 'dots', 'noise', 'waves', 'circle',
               'triangle', 'star')

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
        # equal shares: on the demo's CPU budget every task needs its iterations
        # (the authors' 15:10:5 is in in1k-coco-ade20k.py)
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


# one dataloader and one evaluator per task (MultiTaskValLoop / MultiTaskTestLoop)
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
