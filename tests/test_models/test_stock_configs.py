"""ModSquadViT inside stock mmpretrain, mmdet and mmseg configs, by its plain name.

Each test takes a config shipped with the installed toolbox, swaps the backbone for
``type='ModSquadViT'`` (resolved after ``custom_imports``, no scope prefix), builds the
full model in the toolbox's scope, runs one training step (finite loss, experts get
gradients) and one test step (the toolbox's data samples come back).
"""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope
from mmengine.structures import PixelData

from mod_squad.registry import toolbox_models

IMAGE_SIZE = 64
SMALL = dict(embed_dims=384, num_layers=4, num_heads=6, feedforward_channels=1536)
TINY = dict(embed_dims=64, num_layers=4, num_heads=2, feedforward_channels=256)


def expert_params(backbone):
    return [p for name, p in backbone.named_parameters() if 'experts' in name]


def train_and_test_step(model, data):
    model.train()
    batch = model.data_preprocessor(data, True)
    losses = model(**batch, mode='loss')
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in expert_params(model.backbone)]
    assert grads and all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    model.eval()
    with torch.no_grad():
        return model.test_step(data)


def image_batch(**data_samples):
    """Two uint8 images of IMAGE_SIZE with the given data samples."""
    return dict(
        inputs=[torch.randint(0, 256, (3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
                for _ in range(2)],
        **data_samples)


def seg_batch():
    from mmseg.structures import SegDataSample
    data_samples = []
    for _ in range(2):
        sample = SegDataSample(
            metainfo=dict(img_shape=(IMAGE_SIZE, IMAGE_SIZE),
                          ori_shape=(IMAGE_SIZE, IMAGE_SIZE)))
        sample.gt_sem_seg = PixelData(
            data=torch.randint(0, 19, (1, IMAGE_SIZE, IMAGE_SIZE)))
        data_samples.append(sample)
    return image_batch(data_samples=data_samples)


def test_plain_name_resolves_in_every_toolbox():
    from mod_squad.models import ModSquadViT
    from mod_squad.registry import MODELS, TOOLBOX_SCOPES
    assert MODELS.scope == 'mod_squad' and MODELS.parent.scope == 'mmengine'
    for scope in TOOLBOX_SCOPES:
        assert toolbox_models(scope).get('ModSquadViT') is ModSquadViT
        with DefaultScope.overwrite_default_scope(scope):
            assert MODELS.get('mod_squad.ModSquadViT') is ModSquadViT


def test_mmpretrain_vit_classifier(stock_config, build_in_scope):
    from mmpretrain.structures import DataSample
    cfg = stock_config('mmpretrain', 'vision_transformer/vit-base-p16_64xb64_in1k.py')
    cfg.model.backbone = dict(
        type='ModSquadViT', arch=SMALL, img_size=IMAGE_SIZE, out_type='cls_token')
    cfg.model.head.in_channels = SMALL['embed_dims']
    cfg.model.head.hidden_dim = 64
    model = build_in_scope('mmpretrain', cfg.model)
    data = image_batch(data_samples=[DataSample().set_gt_label(i) for i in (3, 7)])
    results = train_and_test_step(model, data)
    assert len(results) == 2 and results[0].pred_score.shape == (1000, )


@pytest.mark.parametrize('config', [
    'mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', 'retinanet/retinanet_r50_fpn_1x_coco.py'
])
def test_mmdet_detectors(config, stock_config, build_in_scope):
    from mmdet.testing import demo_mm_inputs
    cfg = stock_config('mmdet', config)
    cfg.model.backbone = dict(
        type='ModSquadViT',
        arch=SMALL,
        img_size=IMAGE_SIZE * 2,
        with_cls_token=False,
        out_type='pyramid',
        out_indices=-1,
        window_size=4,
        global_attn_indexes=(3, ))
    cfg.model.neck.in_channels = [SMALL['embed_dims']] * 4
    model = build_in_scope('mmdet', cfg.model)
    with_mask = 'mask' in config
    data = demo_mm_inputs(
        batch_size=2,
        image_shapes=[(3, IMAGE_SIZE * 2, IMAGE_SIZE * 2)] * 2,
        num_items=[3, 2],
        num_classes=80,
        with_mask=with_mask)
    results = train_and_test_step(model, data)
    assert len(results) == 2
    assert results[0].pred_instances.bboxes.shape[-1] == 4
    if with_mask:
        assert 'masks' in results[0].pred_instances


def test_mmseg_upernet(stock_config, build_in_scope):
    cfg = stock_config('mmseg', '_base_/models/upernet_vit-b16_ln_mln.py')
    channels = [SMALL['embed_dims']] * 4
    cfg.model.pretrained = None
    cfg.model.backbone = dict(
        type='ModSquadViT',
        arch=SMALL,
        img_size=IMAGE_SIZE,
        out_type='featmap',
        out_indices=(0, 1, 2, 3))
    cfg.model.neck.update(in_channels=channels, out_channels=SMALL['embed_dims'])
    cfg.model.decode_head.update(in_channels=channels, channels=32)
    cfg.model.auxiliary_head.update(in_channels=SMALL['embed_dims'], channels=32)
    # SyncBN needs a process group; single-process CPU steps use BN.
    cfg.model.decode_head.norm_cfg = cfg.model.auxiliary_head.norm_cfg = dict(
        type='BN', requires_grad=True)
    cfg.model.data_preprocessor.size = (IMAGE_SIZE, IMAGE_SIZE)
    model = build_in_scope('mmseg', cfg.model)
    results = train_and_test_step(model, seg_batch())
    assert results[0].pred_sem_seg.data.shape == (1, IMAGE_SIZE, IMAGE_SIZE)


@pytest.mark.parametrize('config,scope', [
    ('mod-squad-vit-b-p16_64xb64_in1k.py', 'mmpretrain'),
    ('mask-rcnn_mod-squad-vit-b-p16_fpn_1x_coco.py', 'mmdet'),
    ('retinanet_mod-squad-vit-b-p16_fpn_1x_coco.py', 'mmdet'),
    ('upernet_mod-squad-vit-b-p16_mln_8xb2-160k_ade20k-512x512.py', 'mmseg'),
])
def test_single_task_configs_build(config, scope, build_in_scope):
    from mod_squad.models import ModSquadViT
    cfg = Config.fromfile(osp.join('configs/mod_squad/single_task', config))
    assert cfg.default_scope == scope
    if cfg.get('data_preprocessor') is not None:
        cfg.model.setdefault('data_preprocessor', cfg.data_preprocessor)
    model = build_in_scope(scope, cfg.model)
    assert isinstance(model.backbone, ModSquadViT)
    assert model.backbone.embed_dims == 768


def linear_probe(stock_config, build_in_scope, frozen_stages):
    """mmpretrain's MAE linear-probe recipe (``frozen_stages=12`` in its ViT) with a
    tiny ModSquadViT that has dropout and drop path."""
    cfg = stock_config('mmpretrain',
                       'mae/benchmarks/vit-base-p16_8xb2048-linear-coslr-90e_in1k.py')
    assert cfg.model.backbone.frozen_stages == 12
    cfg.model.backbone = dict(
        type='ModSquadViT', arch=TINY, img_size=IMAGE_SIZE, frozen_stages=frozen_stages,
        drop_rate=0.2, drop_path_rate=0.2)
    cfg.model.neck.input_features = cfg.model.head.in_channels = TINY['embed_dims']
    return build_in_scope('mmpretrain', cfg.model)


def backbone_outputs_in_train_mode(model, x):
    model.train()
    with torch.no_grad():
        return [model.backbone(x)[0] for _ in range(2)]


@pytest.mark.parametrize('frozen_stages', [4, 2])
def test_frozen_stages_stay_frozen_through_adamw_with_weight_decay(
        stock_config, build_in_scope, frozen_stages):
    from mmpretrain.structures import DataSample
    model = linear_probe(stock_config, build_in_scope, frozen_stages)
    backbone = model.backbone
    frozen_prefixes = ('patch_embed.', 'pos_embed', 'cls_token', 'task_embed.') + tuple(
        f'layers.{i}.' for i in range(frozen_stages))
    if frozen_stages == TINY['num_layers']:
        frozen_prefixes += ('ln1.', )
    frozen = {n for n, _ in backbone.named_parameters() if n.startswith(frozen_prefixes)}
    assert {n for n, p in backbone.named_parameters() if not p.requires_grad} == frozen
    assert any('router' in n for n in frozen)  # the routers of frozen blocks too
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optim_wrapper = build_optim_wrapper(
        model, dict(optimizer=dict(type='AdamW', lr=1e-2, weight_decay=0.5)))
    data = image_batch(data_samples=[DataSample().set_gt_label(i) for i in (3, 7)])
    for _ in range(2):
        model.train_step(data, optim_wrapper)
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert not {f'backbone.{n}' for n in frozen} & changed
    assert 'head.layers.head.weight' in changed
    assert ('backbone.layers.3.ln1.weight' in changed) == (frozen_stages < 4)
    # train() keeps the frozen stages in eval mode: no dropout, no drop path
    model.train()
    modes = [{m.training for m in layer.modules()} for layer in backbone.layers]
    assert modes == [{False}] * frozen_stages + [{True}] * (4 - frozen_stages)
    assert not backbone.patch_embed.training and not backbone.drop_after_pos.training


def test_fully_frozen_backbone_is_deterministic_in_train_mode(stock_config,
                                                              build_in_scope):
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    first, second = backbone_outputs_in_train_mode(
        linear_probe(stock_config, build_in_scope, 4), x)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    first, second = backbone_outputs_in_train_mode(
        linear_probe(stock_config, build_in_scope, -1), x)
    assert not torch.equal(first, second)  # dropout and drop path at work


def test_frozen_stages_out_of_range():
    from mod_squad.models import ModSquadViT
    with pytest.raises(ValueError, match='frozen_stages=5 out of range: -1 or 0 '
                       r'\(none\) to num_layers=4 \(all\)'):
        ModSquadViT(arch=TINY, img_size=IMAGE_SIZE, frozen_stages=5)


def dense_checkpoint(path):
    """A small mmpretrain ViT checkpoint file, every tensor random."""
    from mmpretrain.models import VisionTransformer
    vit = VisionTransformer(arch=TINY, img_size=IMAGE_SIZE, out_type='featmap')
    for param in vit.parameters():
        torch.nn.init.normal_(param, std=0.05)
    torch.save(dict(state_dict=vit.state_dict()), path)
    return vit.state_dict()


def upernet_with_pretrained(stock_config, pretrained, **backbone):
    """mmseg's ViT UPerNet config as it comes (``model.pretrained`` set), ModSquadViT
    swapped in."""
    cfg = stock_config('mmseg', '_base_/models/upernet_vit-b16_ln_mln.py')
    assert cfg.model.pretrained.startswith('pretrain/')
    cfg.model.pretrained = pretrained
    cfg.model.backbone = dict(
        type='ModSquadViT', arch=TINY, img_size=IMAGE_SIZE, moe_layers='none',
        out_type='featmap', out_indices=(0, 1, 2, 3), **backbone)
    return cfg.model


def test_mmseg_pretrained_becomes_the_pretrained_init(stock_config, build_in_scope,
                                                      tmp_path):
    path = str(tmp_path / 'vit-tiny.pth')
    dense = dense_checkpoint(path)
    with pytest.warns(UserWarning, match='pretrained is deprecated'):
        model = build_in_scope('mmseg', upernet_with_pretrained(stock_config, path))
    assert model.backbone.init_cfg == dict(type='Pretrained', checkpoint=path)
    model.backbone.init_weights()
    for key in ('pos_embed', 'layers.2.attn.qkv.weight', 'layers.3.ffn.layers.1.bias'):
        torch.testing.assert_close(model.backbone.state_dict()[key], dense[key])

    both = upernet_with_pretrained(
        stock_config, path, init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(ValueError, match='pretrained and init_cfg cannot be set at the '
                       'same time'):
        build_in_scope('mmseg', both)
    with pytest.raises(TypeError, match='pretrained must be a str or None, got int'):
        build_in_scope('mmseg', upernet_with_pretrained(stock_config, 1))


def test_mmseg_dpt_head_on_featmap_cls_token(stock_config, build_in_scope):
    cfg = stock_config('mmseg', '_base_/models/dpt_vit-b16.py')
    assert cfg.model.backbone.output_cls_token
    cfg.model.pretrained = None
    cfg.model.backbone = dict(
        type='ModSquadViT', arch=TINY, img_size=IMAGE_SIZE,
        out_type='featmap_cls_token', out_indices=(0, 1, 2, 3), final_norm=False)
    cfg.model.decode_head.update(
        in_channels=[TINY['embed_dims']] * 4, embed_dims=TINY['embed_dims'], channels=32,
        post_process_channels=[16, 32, 64, 64], norm_cfg=dict(type='BN'))
    cfg.model.data_preprocessor.size = (IMAGE_SIZE, IMAGE_SIZE)
    model = build_in_scope('mmseg', cfg.model)
    assert model.decode_head.reassemble_blocks.readout_type == 'project'
    results = train_and_test_step(model, seg_batch())
    assert results[0].pred_sem_seg.data.shape == (1, IMAGE_SIZE, IMAGE_SIZE)
