# ModSquadViT-B (16 MLP experts top-4, 24 attention head-experts top-12, windowed
# attention with four global blocks as ViTDet) with a linear classifier, mmdet's
# Mask R-CNN FPN on the simple feature pyramid, and UPerNet, sized for ImageNet-1K /
# COCO / ADE20K (1000 / 80 / 150 classes). Loss weights and the heterogeneous
# mutual-information loss are the authors'.
embed_dims = 768
mean = [123.675, 116.28, 103.53]
std = [58.395, 57.12, 57.375]
norm_cfg = dict(type='SyncBN', requires_grad=True)  # same task on every rank: safe

model = dict(
    type='ModSquadMultiTaskModel',
    backbone=dict(
        type='ModSquadViT',
        arch='base',
        task_names=('cls', 'det', 'seg'),
        img_size=224,
        with_cls_token=False,
        window_size=14,
        global_attn_indexes=(2, 5, 8, 11),
        drop_path_rate=0.1,
        with_cp=True,
        router_cfg=dict(
            aux_loss=dict(mi_weight=0.0005, mi_form='heterogeneous', warmup_iters=100))),
    loss_weights=dict(cls=1.0, det=0.6, seg=0.2),
    branches=dict(
        cls=dict(
            _scope_='mmpretrain',
            type='ImageClassifier',
            data_preprocessor=dict(
                type='ClsDataPreprocessor', mean=mean, std=std, to_rgb=True,
                num_classes=1000),
            backbone=dict(type='mod_squad.SharedBackboneView', out_type='avg_featmap'),
            head=dict(
                type='LinearClsHead',
                num_classes=1000,
                in_channels=embed_dims,
                loss=dict(
                    type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
                topk=(1, 5)),
            train_cfg=dict(augments=[
                dict(type='Mixup', alpha=0.8),
                dict(type='CutMix', alpha=1.0)
            ])),
        # mmdet's Mask R-CNN FPN on ViTDet's simple pyramid
        det=dict(
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
            _scope_='mmseg',
            type='EncoderDecoder',
            data_preprocessor=dict(
                type='SegDataPreProcessor', mean=mean, std=std, bgr_to_rgb=True,
                pad_val=0, seg_pad_val=255, size=(512, 512)),
            backbone=dict(
                type='mod_squad.SharedBackboneView', out_type='featmap',
                out_indices=(3, 5, 7, 11)),
            neck=dict(
                type='MultiLevelNeck', in_channels=[embed_dims] * 4,
                out_channels=embed_dims, scales=[4, 2, 1, 0.5]),
            decode_head=dict(
                type='UPerHead',
                in_channels=[embed_dims] * 4,
                in_index=[0, 1, 2, 3],
                pool_scales=(1, 2, 3, 6),
                channels=512,
                dropout_ratio=0.1,
                num_classes=150,
                norm_cfg=norm_cfg,
                align_corners=False,
                loss_decode=dict(
                    type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
            auxiliary_head=dict(
                type='FCNHead',
                in_channels=embed_dims,
                in_index=3,
                channels=256,
                num_convs=1,
                concat_input=False,
                dropout_ratio=0.1,
                num_classes=150,
                norm_cfg=norm_cfg,
                align_corners=False,
                loss_decode=dict(
                    type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
            train_cfg=dict(),
            test_cfg=dict(mode='whole'))))
