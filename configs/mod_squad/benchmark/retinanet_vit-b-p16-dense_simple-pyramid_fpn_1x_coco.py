# RetinaNet with a dense ViT-B, ViTDet-style: the dense baseline of the ModSquadViT-B
# RetinaNet in the same recipe (as
# mask-rcnn_vit-b-p16-dense_simple-pyramid_fpn_1x_coco.py).
_base_ = '../single_task/retinanet_mod-squad-vit-b-p16_fpn_1x_coco.py'
model = dict(backbone=dict(moe_layers='none', task_embed=False))
