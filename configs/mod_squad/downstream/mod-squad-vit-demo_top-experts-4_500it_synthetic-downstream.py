# Routers + top experts: the routers and task embedding, and in every MoE MLP and MoA
# the 4 of 8 experts the old 'cls' task uses most (the checkpoint's running usage,
# ExpertUsageHook), train with the new head.
_base_ = ['./_base_/mod-squad-vit-demo_synthetic-downstream.py']

model = dict(
    backbone=dict(
        trainable=dict(mode='top_experts', task='cls', top_n=4,
                       usage=_base_.load_from)))
