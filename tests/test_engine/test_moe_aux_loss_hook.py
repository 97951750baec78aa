"""MoEAuxLossHook: a stock classifier's losses gain the backbone's MoE losses."""
from types import SimpleNamespace

import torch
from mmengine.optim import OptimWrapper
from mmengine.registry import init_default_scope
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

from mod_squad.engine import MoEAuxLossHook
from mod_squad.moe import collect_aux_losses


def build_classifier(aux_loss_cfg):
    init_default_scope('mmpretrain')
    return MODELS.build(
        dict(
            type='ImageClassifier',
            data_preprocessor=dict(type='ClsDataPreprocessor', num_classes=4),
            backbone=dict(
                type='ModSquadViT',
                arch=dict(embed_dims=32, num_layers=2, num_heads=2,
                          feedforward_channels=64),
                img_size=32,
                num_experts=4,
                top_k=2,
                router_cfg=dict(aux_loss=aux_loss_cfg)),
            head=dict(type='LinearClsHead', num_classes=4, in_channels=32)))


def data():
    return dict(
        inputs=[torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
                for _ in range(2)],
        data_samples=[DataSample().set_gt_label(i) for i in (0, 3)])


def test_hook_adds_weighted_aux_losses_to_the_optimised_loss():
    model = build_classifier(dict(switch_weight=0.5, z_weight=0.1))
    optim_wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.))
    hook = MoEAuxLossHook()
    hook.before_train(SimpleNamespace(model=model))
    losses = model(**model.data_preprocessor(data(), True), mode='loss')
    assert {'loss', 'loss_moe_switch', 'loss_moe_z'} <= set(losses)
    # switch loss of each of the two layers is >= 1 (E * sum f_e P_e, P uniform)
    assert losses['loss_moe_switch'] >= 2 * 0.5 - 1e-6
    total, _ = model.parse_losses(losses)
    torch.testing.assert_close(total, sum(losses.values()))
    assert {'loss_moe_switch', 'loss_moe_z'} <= set(
        model.train_step(data(), optim_wrapper))
    # state is collected every step, nothing is left holding a graph
    assert collect_aux_losses(model) == {}

    hook.after_train(SimpleNamespace(model=model))
    assert 'loss_moe_switch' not in model.train_step(data(), optim_wrapper)


def test_hook_without_aux_losses_changes_nothing():
    model = build_classifier({})
    hook = MoEAuxLossHook()
    hook.before_train(SimpleNamespace(model=model))
    assert hook._handle is None
