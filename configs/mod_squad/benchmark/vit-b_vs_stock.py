# ModSquadViT-B beside the stock models OpenMMLab users compare against, for
# tools/analysis_tools/benchmark.py. Each comparison's first model is the baseline of
# its ratios; a model of several configs is deployed as a set (one image per task).
# Configs: a toolbox's own (mmdet::...) or a path from the repository root; a
# ModSquadViT's routers start truncated-normal (as a trained model's, tokens spread
# over the experts; zero-initialised routers would send every token to the same k).
random_routers = {'model.backbone.router_cfg.init': 'trunc_normal'}
no_download = {'model.pretrained': None}

vit_b_cls = 'mmpretrain::vision_transformer/vit-base-p16_64xb64_in1k.py'
mod_squad_cls = dict(
    config='configs/mod_squad/single_task/mod-squad-vit-b-p16_64xb64_in1k.py',
    cfg_options=random_routers)
vit_b_mask_rcnn = ('configs/mod_squad/benchmark/'
                   'mask-rcnn_vit-b-p16-dense_simple-pyramid_fpn_1x_coco.py')
vit_b_seg = dict(
    config='mmseg::vit/vit_vit-b16_mln_upernet_8xb2-160k_ade20k-512x512.py',
    cfg_options=no_download)
mod_squad_seg = dict(
    config='configs/mod_squad/single_task/'
    'upernet_mod-squad-vit-b-p16_mln_8xb2-160k_ade20k-512x512.py',
    cfg_options=dict(random_routers, **no_download))

comparisons = [
    dict(name='cls', models=[
        dict(label='mmpretrain ViT-B', configs=[vit_b_cls]),
        dict(label='ModSquadViT-B', configs=[mod_squad_cls]),
    ]),
    dict(name='mask-rcnn', models=[
        dict(label='Mask R-CNN ViT-B (dense, simple pyramid)', configs=[vit_b_mask_rcnn]),
        dict(label='Mask R-CNN Swin-T (mmdet)',
             configs=['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py']),
        dict(label='Mask R-CNN ModSquadViT-B', configs=[dict(
            config='configs/mod_squad/single_task/'
            'mask-rcnn_mod-squad-vit-b-p16_fpn_1x_coco.py',
            cfg_options=random_routers)]),
    ]),
    dict(name='retinanet', models=[
        dict(label='RetinaNet ViT-B (dense, simple pyramid)', configs=[
            'configs/mod_squad/benchmark/'
            'retinanet_vit-b-p16-dense_simple-pyramid_fpn_1x_coco.py']),
        dict(label='RetinaNet Swin-T (mmdet)',
             configs=['mmdet::swin/retinanet_swin-t-p4-w7_fpn_1x_coco.py']),
        dict(label='RetinaNet ModSquadViT-B', configs=[dict(
            config='configs/mod_squad/single_task/'
            'retinanet_mod-squad-vit-b-p16_fpn_1x_coco.py',
            cfg_options=random_routers)]),
    ]),
    dict(name='seg', models=[
        dict(label='UPerNet ViT-B (mmseg)', configs=[vit_b_seg]),
        dict(label='UPerNet ModSquadViT-B', configs=[mod_squad_seg]),
    ]),
    dict(name='joint', models=[
        dict(label='3 stock single-task ViT-B models',
             configs=[vit_b_cls, vit_b_mask_rcnn, vit_b_seg]),
        dict(label='joint ModSquadViT-B (one model)', configs=[dict(
            config='configs/mod_squad/'
            'mod-squad_vit-b-p16_mask-rcnn_upernet_8xb64-2-2-160k_in1k-coco-ade20k.py',
            cfg_options=random_routers)]),
    ]),
]
