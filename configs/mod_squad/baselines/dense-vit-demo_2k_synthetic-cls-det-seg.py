# The joint demo with a DENSE shared ViT (hard parameter sharing): the same recipe,
# branches, data and schedule as ../mod-squad_vit-demo_2k_synthetic-cls-det-seg.py,
# with plain attention and MLP in every block (the MoE layers' active widths; 5% more
# FLOPs, as its attention has a key and value per head where MoA shares one) and no
# task embedding: the tasks share every backbone weight.
_base_ = ['../mod-squad_vit-demo_2k_synthetic-cls-det-seg.py']
model = dict(backbone=dict(moe_layers='none', task_embed=False, router_cfg=None))
# no routers, no routing statistics
custom_hooks = []
