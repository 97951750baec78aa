# Mod-Squad heterogeneous multi-task training, the full recipe on real data:
# ImageNet-1K classification + COCO 2017 detection/instance segmentation (Mask R-CNN)
# + ADE20K semantic segmentation (UPerNet), one ModSquadViT-B.
# Name: OpenMMLab's {gpus}xb{batch}-{schedule} with one per-GPU batch per dataset, in
# the order of the datasets in the name: 8 GPUs x (64 in1k | 2 coco | 2 ade20k images),
# 160k iterations. Every GPU runs the same task in an iteration, so one step sees 512
# ImageNet, 16 COCO or 16 ADE20K images.
# Data at the standard OpenMMLab paths: data/imagenet, data/coco,
# data/ade/ADEChallengeData2016. The CPU demo on synthetic data is its sibling,
# mod-squad_vit-demo_2k_synthetic-cls-det-seg.py.
#
# From the authors' setup: sampling ratios cls:det:seg = 15:10:5 with every GPU on the
# same task in an iteration; per-GPU batches 64 / 2 / 2; loss weights 1.0 / 0.6 / 0.2;
# 16 MLP experts top-4 of hidden 768, 24 attention head-experts top-12; heterogeneous
# mutual-information loss 0.0005. Our choices where the paper is silent: AdamW with
# layer-wise LR decay 0.75, 160k iterations, patch tokens without a cls token (average
# pooling for classification) so that windowed attention serves the large detection and
# segmentation inputs as in ViTDet. Upcycle a dense ViT-B (DeiT/MAE) by setting
# model.backbone.init_cfg=dict(type='Pretrained', checkpoint=...).
_base_ = [
    './_base_/models/mod-squad_vit-b-p16_mask-rcnn_upernet.py',
    './_base_/datasets/in1k-coco-ade20k.py',
    './_base_/schedules/schedule_160k.py', './_base_/default_runtime.py'
]

default_hooks = dict(checkpoint=dict(save_best='det/coco/bbox_mAP', rule='greater'))
# tools/train.py --auto-scale-lr: the lr is for 8 GPUs x 64 cls images per iteration.
auto_scale_lr = dict(enable=False, base_batch_size=512, task='cls')
