# Routers only: the 'cls' routers and task embedding of the demo's backbone and the
# new head train; experts, attention and norms stay as the joint training left them.
_base_ = ['./_base_/mod-squad-vit-demo_synthetic-downstream.py']

model = dict(backbone=dict(trainable=dict(mode='routers')))
