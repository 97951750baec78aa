# ModSquadViT-B for mmdet detectors: windowed attention with four global blocks and
# the simple feature pyramid (as ViTDet) into the stock FPN, AdamW with AMP.
custom_imports = dict(imports=['mod_squad'], allow_failed_imports=False)
mod_squad_det_backbone = dict(
    _delete_=True,
    type='ModSquadViT',
    arch='base',
    img_size=1024,
    task_names=('det', ),
    with_cls_token=False,
    out_type='pyramid',
    out_indices=-1,
    window_size=14,
    global_attn_indexes=(2, 5, 8, 11),
    drop_path_rate=0.1,
    with_cp=True)
mod_squad_optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1),
    clip_grad=dict(max_norm=1.0))
