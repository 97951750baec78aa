# A small ModSquadViT (6 blocks of width 128, patch 8, 8 experts top-2) with a linear
# classifier, RetinaNet and UPerNet, sized for the synthetic data
# (../datasets/synthetic_cls-det-seg.py: 10 / 5 / 9 classes) on CPU.
embed_dims = 128
mean = [123.675, 116.28, 103.53]
std = [58.395, 57.12, 57.375]
norm_cfg = dict(type='BN', requires_grad=True)  # SyncBN on GPU clusters
det_norm_cfg = dict(type='GN', num_groups=16, requires_grad=True)  # heads from scratch

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
        router_cfg=dict(
            aux_loss=dict(mi_weight=0.0005, mi_form='heterogeneous', warmup_iters=100))),
    loss_weights=dict(cls=1.0, det=1.0, seg=1.0),
    branches=dict(
        cls=dict(
            _scope_='mmpretrain',
            type='ImageClassifier',
            data_preprocessor=dict(
                type='ClsDataPreprocessor', mean=mean, std=std, to_rgb=True,
                num_classes=10),
            backbone=dict(type='mod_squad.SharedBackboneView', out_type='cls_token'),
            head=dict(
                type='LinearClsHead',
                num_classes=10,
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
                num_classes=5,
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
                num_classes=9,
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
                num_classes=9,
                norm_cfg=norm_cfg,
                align_corners=False,
                loss_decode=dict(
                    type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
            train_cfg=dict(),
            test_cfg=dict(mode='whole'))))
