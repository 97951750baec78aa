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
from mmengine.registry import DefaultScope, init_default_scope
from mmengine.structures import PixelData

from mod_squad.registry import toolbox_models

IMAGE_SIZE = 64
SMALL = dict(embed_dims=384, num_layers=4, num_heads=6, feedforward_channels=1536)


def load_stock_config(scope, relative_path):
    package = __import__(scope)
    cfg = Config.fromfile(
        osp.join(osp.dirname(package.__file__), '.mim', 'configs', relative_path))
    cfg.custom_imports = dict(imports=['mod_squad'], allow_failed_imports=False)
    cfg = Config.fromstring(cfg.pretty_text, '.py')
    # As the toolboxes' runners do: a top-level preprocessor goes into the model.
    if cfg.get('data_preprocessor') is not None:
        cfg.model.setdefault('data_preprocessor', cfg.data_preprocessor)
    return cfg


def build_in_scope(scope, model_cfg):
    init_default_scope(scope)
    with DefaultScope.overwrite_default_scope(scope):
        return toolbox_models(scope).build(model_cfg)


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


def test_plain_name_resolves_in_every_toolbox():
    from mod_squad.models import ModSquadViT
    from mod_squad.registry import MODELS, TOOLBOX_SCOPES
    assert MODELS.scope == 'mod_squad' and MODELS.parent.scope == 'mmengine'
    for scope in TOOLBOX_SCOPES:
        assert toolbox_models(scope).get('ModSquadViT') is ModSquadViT
        with DefaultScope.overwrite_default_scope(scope):
            assert MODELS.get('mod_squad.ModSquadViT') is ModSquadViT


def test_mmpretrain_vit_classifier():
    from mmpretrain.structures import DataSample
    cfg = load_stock_config('mmpretrain',
                            'vision_transformer/vit-base-p16_64xb64_in1k.py')
    cfg.model.backbone = dict(
        type='ModSquadViT', arch=SMALL, img_size=IMAGE_SIZE, out_type='cls_token')
    cfg.model.head.in_channels = SMALL['embed_dims']
    cfg.model.head.hidden_dim = 64
    model = build_in_scope('mmpretrain', cfg.model)
    data = dict(
        inputs=[torch.randint(0, 256, (3, IMAGE_SIZE, IMAGE_SIZE),
                              dtype=torch.uint8) for _ in range(2)],
        data_samples=[DataSample().set_gt_label(i) for i in (3, 7)])
    results = train_and_test_step(model, data)
    assert len(results) == 2 and results[0].pred_score.shape == (1000, )


@pytest.mark.parametrize('config', [
    'mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', 'retinanet/retinanet_r50_fpn_1x_coco.py'
])
def test_mmdet_detectors(config):
    from mmdet.testing import demo_mm_inputs
    cfg = load_stock_config('mmdet', config)
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


def test_mmseg_upernet():
    from mmseg.structures import SegDataSample
    cfg = load_stock_config('mmseg', '_base_/models/upernet_vit-b16_ln_mln.py')
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
    data_samples = []
    for _ in range(2):
        sample = SegDataSample(
            metainfo=dict(img_shape=(IMAGE_SIZE, IMAGE_SIZE),
                          ori_shape=(IMAGE_SIZE, IMAGE_SIZE)))
        sample.gt_sem_seg = PixelData(
            data=torch.randint(0, 19, (1, IMAGE_SIZE, IMAGE_SIZE)))
        data_samples.append(sample)
    data = dict(
        inputs=[torch.randint(0, 256, (3, IMAGE_SIZE, IMAGE_SIZE),
                              dtype=torch.uint8) for _ in range(2)],
        data_samples=data_samples)
    results = train_and_test_step(model, data)
    assert results[0].pred_sem_seg.data.shape == (1, IMAGE_SIZE, IMAGE_SIZE)


@pytest.mark.parametrize('config,scope', [
    ('mod-squad-vit-b-p16_64xb64_in1k.py', 'mmpretrain'),
    ('mask-rcnn_mod-squad-vit-b-p16_fpn_1x_coco.py', 'mmdet'),
    ('retinanet_mod-squad-vit-b-p16_fpn_1x_coco.py', 'mmdet'),
    ('upernet_mod-squad-vit-b-p16_mln_8xb2-160k_ade20k-512x512.py', 'mmseg'),
])
def test_single_task_configs_build(config, scope):
    from mod_squad.models import ModSquadViT
    cfg = Config.fromfile(osp.join('configs/mod_squad/single_task', config))
    assert cfg.default_scope == scope
    if cfg.get('data_preprocessor') is not None:
        cfg.model.setdefault('data_preprocessor', cfg.data_preprocessor)
    model = build_in_scope(scope, cfg.model)
    assert isinstance(model.backbone, ModSquadViT)
    assert model.backbone.embed_dims == 768
