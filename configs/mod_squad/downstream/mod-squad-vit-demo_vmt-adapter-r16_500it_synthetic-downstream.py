# VMT-Adapter mode: a VMT-Adapter (r = 16) beside the MLP of every block and the new
# head train; the whole backbone, routers included, is frozen.
_base_ = ['./_base_/mod-squad-vit-demo_synthetic-downstream.py']

model = dict(
    backbone=dict(adapter=dict(type='vmt', dims=16), trainable=dict(mode='adapters')))
