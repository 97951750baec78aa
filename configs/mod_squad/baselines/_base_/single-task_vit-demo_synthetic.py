# The demo's recipe (../../mod-squad_vit-demo_2k_synthetic-cls-det-seg.py) for ONE task:
# the same backbone settings, data, per-task batch, optimiser and schedule shape, in
# stock mmengine loops. A task config inherits this, takes its stock model from the
# demo's branch (`_base_.model.branches.<task>`) with a single-task ModSquadViT, its
# dataset and evaluator from the demo's, and sets `max_iters` to the iterations the
# task gets in the joint run.
_base_ = [
    '../../_base_/models/mod-squad_vit-demo_retinanet_upernet.py',
    '../../_base_/datasets/synthetic_cls-det-seg.py',
    '../../_base_/schedules/schedule_2k.py', '../../_base_/default_runtime.py'
]

train_cfg = dict(_delete_=True, type='IterBasedTrainLoop')
val_cfg = dict(_delete_=True, type='ValLoop')
test_cfg = dict(_delete_=True, type='TestLoop')
# no routing statistics to log (ExpertUsageHook compares tasks)
custom_hooks = []
