# mmpretrain's ViT-B/16 ImageNet recipe with a ModSquadViT-B backbone.
# Upcycle a dense ViT: backbone.init_cfg=dict(type='Pretrained', checkpoint=...).
_base_ = 'mmpretrain::vision_transformer/vit-base-p16_64xb64_in1k.py'
custom_imports = dict(imports=['mod_squad'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='ModSquadViT',
        arch='base',
        img_size=224,
        task_names=('cls', ),
        drop_path_rate=0.1,
        out_type='cls_token'))
