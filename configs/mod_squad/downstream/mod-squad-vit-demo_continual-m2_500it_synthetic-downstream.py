# New experts only (continual learning): the demo's backbone gets a 4th task,
# 'downstream', with a router and task embedding of its own and 2 new experts in
# every MoE MLP and MoA (copies of the 2 the old 'cls' task uses most, by the
# checkpoint's running usage); these and the new head train. Everything old is
# frozen and the old tasks' routers keep their 8 experts, so cls/det/seg would
# predict exactly as before (their branches are left out here). A multi-task model,
# so its data goes through HeterogeneousDataset and TaskBatchSampler, one task.
_base_ = ['./_base_/mod-squad-vit-demo_synthetic-downstream.py']
new_task = 'downstream'

model = dict(
    _delete_=True,
    type='ModSquadMultiTaskModel',
    backbone=dict(
        _base_.model.backbone,
        out_type='raw',
        task_names=('cls', 'det', 'seg', new_task),
        # the joint training's routers (heterogeneous MI loss): the checkpoint's
        # running MI statistics grow into the new task's layers with them
        router_cfg=dict(
            aux_loss=dict(mi_weight=0.0005, mi_form='heterogeneous', warmup_iters=100)),
        continual=dict(task=new_task, num_experts=2, init='copy', copy_from='cls',
                       usage=_base_.load_from)),
    branches={
        new_task: dict(
            _base_.model,
            backbone=dict(type='mod_squad.SharedBackboneView',
                          out_type=_base_.model.backbone.out_type))
    })

train_dataloader = dict(
    _delete_=True,
    num_workers=_base_.train_dataloader.num_workers,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(
        type='TaskBatchSampler',
        batch_sizes={new_task: _base_.train_dataloader.batch_size}),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(
        type='HeterogeneousDataset',
        datasets={new_task: _base_.train_dataloader.dataset}))
val_dataloader = {'_delete_': True, new_task: _base_.val_dataloader}
test_dataloader = val_dataloader
val_evaluator = {'_delete_': True, new_task: _base_.val_evaluator}
test_evaluator = val_evaluator
train_cfg = dict(type='TaskIterBasedTrainLoop')
val_cfg = dict(_delete_=True, type='MultiTaskValLoop')
test_cfg = dict(_delete_=True, type='MultiTaskTestLoop')
