# VMT-Adapter mode of the demo: the joint demo checkpoint (bash tools/run_demo.sh ->
# work_dirs/demo/iter_2000.pth; another with --cfg-options load_from=...) gets a
# VMT-Adapter (r = 16) in parallel to the MLP of every block and trains it on all
# three tasks at once; the rest of the backbone is frozen (requires_grad=False at
# build), the heads train. Fresh adapters output zero, so training starts from the
# checkpoint's predictions. 'vmt_lite' shares the down- and up-projection.
_base_ = ['./mod-squad_vit-demo_2k_synthetic-cls-det-seg.py']

load_from = 'work_dirs/demo/iter_2000.pth'
model = dict(
    backbone=dict(
        adapter=dict(type='vmt', dims=16),
        trainable=dict(mode='adapters'),
        # the routers are frozen: no auxiliary routing loss to steer the adapters
        router_cfg=dict(aux_loss=dict(mi_weight=0.))))

max_iters = 1000
train_cfg = dict(max_iters=max_iters, val_interval=500)
# adapters and heads only: a larger learning rate than the joint training's
optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=50, end=max_iters,
         eta_min=1e-5),
]
default_hooks = dict(checkpoint=dict(interval=500))
