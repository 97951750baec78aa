"""LayerDecayOptimWrapperConstructor: layer-wise LR decay for any model with a
ModSquadViT (stock mmpretrain, mmdet and mmseg models, the multi-task model)."""
import pytest
import torch
from mmengine.optim import build_optim_wrapper

TINY = dict(embed_dims=64, num_layers=4, num_heads=2, feedforward_channels=256)
LR, DECAY = 1e-3, 0.5
OPTIM_WRAPPER = dict(
    optimizer=dict(type='AdamW', lr=LR, weight_decay=0.05),
    constructor='mod_squad.LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=DECAY))


def classifier(cfg):
    cfg.model.backbone = dict(type='ModSquadViT', arch=TINY, img_size=64)
    cfg.model.head.in_channels = TINY['embed_dims']
    return cfg.model


def retinanet(cfg):
    cfg.model.backbone = dict(
        type='ModSquadViT', arch=TINY, img_size=64, with_cls_token=False,
        out_type='pyramid')
    cfg.model.neck.in_channels = [TINY['embed_dims']] * 4
    return cfg.model


def upernet(cfg):
    channels = [TINY['embed_dims']] * 4
    cfg.model.pretrained = None
    cfg.model.backbone = dict(
        type='ModSquadViT', arch=TINY, img_size=64, out_type='featmap',
        out_indices=(0, 1, 2, 3))
    cfg.model.neck.update(in_channels=channels, out_channels=TINY['embed_dims'])
    cfg.model.decode_head.update(
        in_channels=channels, channels=16, norm_cfg=dict(type='BN'))
    cfg.model.auxiliary_head.update(in_channels=TINY['embed_dims'], channels=16,
                                    norm_cfg=dict(type='BN'))
    return cfg.model


def learning_rates(optim_wrapper):
    return {g['param_name']: g['lr'] for g in optim_wrapper.optimizer.param_groups}


@pytest.mark.parametrize('scope,config,swap_backbone', [
    ('mmpretrain', 'vision_transformer/vit-base-p16_64xb64_in1k.py', classifier),
    ('mmdet', 'retinanet/retinanet_r50_fpn_1x_coco.py', retinanet),
    ('mmseg', '_base_/models/upernet_vit-b16_ln_mln.py', upernet),
])
def test_stock_models_get_layer_wise_learning_rates(scope, config, swap_backbone,
                                                    stock_config, build_in_scope):
    model = build_in_scope(scope, swap_backbone(stock_config(scope, config)))
    lr = learning_rates(build_optim_wrapper(model, OPTIM_WRAPPER))
    # 4 blocks: depths 0 (stem) .. 5 (the rest); lr = LR * DECAY ** (5 - depth)
    assert sorted(set(lr.values())) == pytest.approx(
        [LR * DECAY**d for d in range(5, -1, -1)])
    assert lr['backbone.pos_embed'] == pytest.approx(LR * DECAY**5)
    assert lr['backbone.task_embed.default'] == pytest.approx(LR * DECAY**5)
    assert lr['backbone.layers.0.ln1.weight'] == pytest.approx(LR * DECAY**4)
    assert lr['backbone.layers.1.ffn.experts.w1'] == pytest.approx(LR * DECAY**3)
    assert lr['backbone.layers.2.attn.q_proj'] == pytest.approx(LR * DECAY**2)
    assert lr['backbone.ln1.weight'] == pytest.approx(LR)
    not_backbone = {n: v for n, v in lr.items() if not n.startswith('backbone.')}
    assert not_backbone and list(not_backbone.values()) == pytest.approx(
        [LR] * len(not_backbone))


def test_multi_task_model_decays_the_shared_backbone(demo_cfg):
    from mmengine.registry import init_default_scope

    from mod_squad.registry import MODELS
    init_default_scope('mod_squad')
    model = MODELS.build(demo_cfg.model)
    lr = learning_rates(build_optim_wrapper(model, OPTIM_WRAPPER))
    # 6 blocks: depths 0 (stem) .. 7 (branches); lr = LR * DECAY ** (7 - depth)
    assert len(set(lr.values())) == 8
    assert lr['backbone.pos_embed'] == pytest.approx(LR * DECAY**7)
    assert lr['backbone.layers.5.ln1.weight'] == pytest.approx(LR * DECAY)
    assert lr['branches.det.neck.lateral_convs.0.conv.weight'] == pytest.approx(LR)
    assert lr['branches.cls.head.fc.weight'] == pytest.approx(LR)


def test_a_model_without_one_mod_squad_vit_is_an_error():
    with pytest.raises(TypeError, match='needs exactly one ModSquadViT in the model; '
                       'Sequential has 0.'):
        build_optim_wrapper(torch.nn.Sequential(torch.nn.Linear(2, 2)), OPTIM_WRAPPER)
