# mmdet's Mask R-CNN 1x COCO recipe with a ModSquadViT-B backbone.
_base_ = [
    'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', './_base_/mod-squad-vit-b-p16_det.py'
]
model = dict(
    backbone={{_base_.mod_squad_det_backbone}}, neck=dict(in_channels=[768] * 4))
optim_wrapper = {{_base_.mod_squad_optim_wrapper}}
