# 160k iterations, AdamW with layer-wise LR decay 0.75 and AMP; the full recipe's
# schedule (the authors do not state theirs).
max_iters = 160000
train_cfg = dict(type='TaskIterBasedTrainLoop', max_iters=max_iters, val_interval=10000)
val_cfg = dict(type='MultiTaskValLoop')
test_cfg = dict(type='MultiTaskTestLoop')
optim_wrapper = dict(
    type='AmpOptimWrapper',
    constructor='mod_squad.LayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        layer_decay_rate=0.75,
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        custom_keys={
            'pos_embed': dict(decay_mult=0.),
            'cls_token': dict(decay_mult=0.),
            'task_embed': dict(decay_mult=0.),
        }),
    clip_grad=dict(max_norm=1.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=1500),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=1500, end=max_iters,
         eta_min=1e-6),
]
# hook intervals scale with the schedule
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(
        type='SafeCheckpointHook', by_epoch=False, interval=10000, max_keep_ckpts=3),
    sampler_seed=dict(type='DistSamplerSeedHook'))
custom_hooks = [dict(type='ExpertUsageHook', interval=500)]
