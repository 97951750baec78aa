# Single-task baseline (seg) of the joint demo: mmseg's EncoderDecoder (UPerNet) with
# the demo's ModSquadViT for one task, trained on segmentation alone for the 734
# iterations segmentation gets in the joint demo run (seed 0, TaskBatchSampler).
# Dense backbone: --cfg-options model.backbone.moe_layers=none
_base_ = ['./_base_/single-task_vit-demo_synthetic.py']
task = 'seg'
max_iters = 734
batch_size = _base_.train_dataloader.batch_sampler.batch_sizes[task]

model = dict(
    _base_.model.branches[task],
    _delete_=True,
    # the demo's backbone with the outputs of the task's view; one task, so no
    # auxiliary loss (the mutual information of one task is 0)
    backbone={
        **_base_.model.backbone, **_base_.model.branches[task].backbone,
        'type': 'mod_squad.ModSquadViT', 'task_names': (task, ), 'router_cfg': None
    })
train_dataloader = dict(
    _base_.train_dataloader,
    _delete_=True,
    batch_size=batch_size,
    batch_sampler=None,
    dataset=_base_.train_dataloader.dataset.datasets[task])
val_dataloader = dict(_base_.val_dataloader[task], _delete_=True)
test_dataloader = val_dataloader
val_evaluator = dict(_base_.val_evaluator[task], _delete_=True)
test_evaluator = val_evaluator

train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
# the demo's warm-up and cosine, scaled from its 2000 iterations to max_iters
param_scheduler = [
    dict(s, begin=s.begin * max_iters // _base_.max_iters,
         end=s.end * max_iters // _base_.max_iters) for s in _base_.param_scheduler
]
default_hooks = dict(
    checkpoint=dict(interval=max_iters, save_best='mIoU', rule='greater'))
