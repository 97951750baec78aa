# 2k iterations from scratch, AdamW; the schedule of the CPU demo.
max_iters = 2000
train_cfg = dict(type='TaskIterBasedTrainLoop', max_iters=max_iters, val_interval=1000)
val_cfg = dict(type='MultiTaskValLoop')
test_cfg = dict(type='MultiTaskTestLoop')
# lr 2e-4: at 5e-4 the from-scratch ViT's features drift too fast for box regression
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        custom_keys={
            'pos_embed': dict(decay_mult=0.),
            'cls_token': dict(decay_mult=0.),
            'task_embed': dict(decay_mult=0.),
        }),
    clip_grad=dict(max_norm=5.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=100, end=max_iters,
         eta_min=1e-5),
]
# hook intervals scale with the schedule
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(
        type='SafeCheckpointHook', by_epoch=False, interval=1000, max_keep_ckpts=2),
    sampler_seed=dict(type='DistSamplerSeedHook'))
custom_hooks = [dict(type='ExpertUsageHook', interval=100)]
