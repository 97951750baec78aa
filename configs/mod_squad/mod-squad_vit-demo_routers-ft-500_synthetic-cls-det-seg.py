# Fine-tune the demo joint checkpoint (tools/run_demo.sh) with few trainable
# parameters: the routers and task embeddings of every task; the heads train, every
# other backbone parameter is frozen at build (requires_grad=False), so it gets no
# gradient, no optimiser state and no weight decay. TrainableParamsHook logs the
# trainable / total parameters at start. Other modes of model.backbone.trainable:
#   dict(mode='top_experts', task='cls', top_n=4, usage=load_from)  # + cls's top 4
#   dict(mode='experts', last=2)  # + the last 2 experts of every layer
#   dict(mode='heads')            # backbone frozen (with frozen_stages=6: linear probe)
_base_ = ['./mod-squad_vit-demo_2k_synthetic-cls-det-seg.py']

load_from = 'work_dirs/demo/iter_2000.pth'
model = dict(backbone=dict(trainable=dict(mode='routers')))

max_iters = 500
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=50, end=max_iters,
         eta_min=1e-5),
]
default_hooks = dict(checkpoint=dict(interval=max_iters))
custom_hooks = [
    dict(type='ExpertUsageHook', interval=100),
    dict(type='TrainableParamsHook'),
]
