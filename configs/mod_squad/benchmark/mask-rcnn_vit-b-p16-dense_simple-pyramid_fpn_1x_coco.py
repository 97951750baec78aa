# Mask R-CNN with a dense ViT-B, ViTDet-style (windowed attention with four global
# blocks, the simple feature pyramid into the stock FPN): the dense baseline of the
# ModSquadViT-B detector in the same recipe. mmdet's wheel has no ViTDet, so this is
# ModSquadViT without mixtures or task embedding, whose blocks are mmpretrain's
# attention and FFN (the same FLOPs and parameters as mmpretrain's ViT, tested).
_base_ = '../single_task/mask-rcnn_mod-squad-vit-b-p16_fpn_1x_coco.py'
model = dict(backbone=dict(moe_layers='none', task_embed=False))
