# mmseg's ViT-B + MultiLevelNeck + UPerNet ADE20K recipe with a ModSquadViT-B backbone.
_base_ = 'mmseg::vit/vit_vit-b16_mln_upernet_8xb2-160k_ade20k-512x512.py'
custom_imports = dict(imports=['mod_squad'], allow_failed_imports=False)

model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='ModSquadViT',
        arch='base',
        img_size=512,
        task_names=('seg', ),
        out_type='featmap',
        out_indices=(2, 5, 8, 11),
        drop_path_rate=0.1))
