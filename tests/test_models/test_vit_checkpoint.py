"""Checkpoints that do not fit a ModSquadViT stop with a clear error on every loading
path (``init_cfg``, ``load_checkpoint`` / ``load_from`` / tools/test.py, ``--resume``),
and torchvision ViT checkpoints convert."""
import os.path as osp

import mmdet
import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.model import BaseModel
from mmengine.registry import DefaultScope, init_default_scope
from mmengine.runner import Runner, load_checkpoint
from mmpretrain.models import VisionTransformer
from torchvision.models import vit_b_16
from torchvision.models.vision_transformer import \
    VisionTransformer as TorchvisionViT

from mod_squad.models import ModSquadViT
from mod_squad.models.backbones.vit_checkpoint import convert_to_mod_squad
from mod_squad.registry import toolbox_models

TINY = dict(embed_dims=64, num_layers=4, num_heads=2, feedforward_channels=256)
SIZE = 64


def make_vit(**kwargs) -> ModSquadViT:
    model = ModSquadViT(arch=TINY, img_size=SIZE, **kwargs)
    model.init_weights()
    return model


def randomise(module: nn.Module) -> nn.Module:
    """Every tensor informative (norms and biases too), eval mode."""
    torch.manual_seed(0)
    for param in module.parameters():
        nn.init.normal_(param, std=0.05)
    return module.eval()


def retinanet(**backbone) -> nn.Module:
    """mmdet's stock RetinaNet config with a tiny ModSquadViT backbone."""
    cfg = Config.fromfile(
        osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs', 'retinanet',
                 'retinanet_r50_fpn_1x_coco.py'))
    cfg.model.backbone = dict(
        type='ModSquadViT', arch=TINY, img_size=SIZE, out_type='pyramid', **backbone)
    cfg.model.neck.in_channels = [TINY['embed_dims']] * 4
    init_default_scope('mmdet')
    with DefaultScope.overwrite_default_scope('mmdet'):
        return toolbox_models('mmdet').build(cfg.model)


# --- torchvision ------------------------------------------------------------------
def legacy_torchvision_keys(state_dict):
    """``mlp.0`` / ``mlp.3`` -> ``mlp.linear_1`` / ``mlp.linear_2`` (old torchvision)."""
    return {k.replace('.mlp.0.', '.mlp.linear_1.').replace('.mlp.3.', '.mlp.linear_2.'): v
            for k, v in state_dict.items()}


@pytest.mark.parametrize('keys', [dict, legacy_torchvision_keys])
def test_torchvision_vit_gives_the_same_features(keys):
    tv = randomise(TorchvisionViT(image_size=SIZE, patch_size=16, num_layers=4,
                                  num_heads=2, hidden_dim=64, mlp_dim=256))
    model = make_vit(moe_layers='none', task_embed=False).eval()
    model.load_pretrained(keys(tv.state_dict()))

    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        tokens = tv._process_input(x)  # (B, N, C) patch tokens
        tokens = torch.cat([tv.class_token.expand(2, -1, -1), tokens], dim=1)
        expected = tv.encoder(tokens)  # position embedding, blocks, final norm
        (ours, ), _ = model.forward_tokens(x, None, [-1])
    torch.testing.assert_close(ours, expected)


def test_every_backbone_tensor_of_torchvision_vit_b_16_is_used():
    with torch.device('meta'):  # shapes only: no memory, no download
        tv = vit_b_16()
    model = ModSquadViT(arch='base', moe_layers='none', task_embed=False)
    state_dict, source = convert_to_mod_squad(tv.state_dict(), model)
    assert source == 'torchvision ViT'
    target = model.state_dict()
    assert set(state_dict) - set(target) == {'heads.head.weight', 'heads.head.bias'}
    assert set(target) - set(state_dict) == set()
    assert all(state_dict[k].shape == v.shape for k, v in target.items())


def test_checkpoint_of_no_known_format_names_the_file(tmp_path):
    path = str(tmp_path / 'resnet.pth')
    torch.save(dict(state_dict={'conv1.weight': torch.zeros(8, 3, 7, 7),
                                'fc.weight': torch.zeros(10, 8)}), path)
    model = ModSquadViT(arch=TINY, img_size=SIZE,
                        init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(ValueError) as error:
        model.init_weights()
    message = str(error.value)
    assert message.startswith(f'{path} (read as a mmpretrain ViT checkpoint) fills '
                              "only 0% of the ModSquadViT's weights (0 of ")
    assert "unmatched keys look like ['conv1.weight', 'fc.weight']" in message
    assert 'torchvision keys (encoder.layers.encoder_layer_0.' in message


def test_dense_attention_does_not_upcycle_into_wider_heads():
    dense = VisionTransformer(arch=TINY, img_size=SIZE)
    model = ModSquadViT(arch=TINY, img_size=SIZE, attn_head_dims=64)
    with pytest.raises(ValueError) as error:
        convert_to_mod_squad(dense.state_dict(), model)
    assert str(error.value).startswith(
        'layers.0.attn: a dense attention upcycles into head experts of its own head '
        'width C / heads = 32, but this ModSquadViT has attn_head_dims=64. ')


# --- load_checkpoint (load_from, tools/test.py) ------------------------------------
def test_dense_checkpoint_as_load_from_points_to_init_cfg(tmp_path):
    dense = VisionTransformer(arch=TINY, img_size=SIZE)
    path = str(tmp_path / 'dense.pth')
    torch.save(dict(state_dict={f'backbone.{k}': v
                                for k, v in dense.state_dict().items()}), path)
    with pytest.raises(ValueError) as error:
        load_checkpoint(retinanet(), path)
    message = str(error.value)
    assert message.startswith(
        'The checkpoint has dense layers where this ModSquadViT has mixtures of '
        "experts: ['backbone.layers.0.attn', 'backbone.layers.1.ffn', "
        "'backbone.layers.2.attn', 'backbone.layers.3.ffn']. ")
    assert "init_cfg=dict(type='Pretrained', checkpoint=...)" in message


def test_checkpoint_without_backbone_tensors_stops(tmp_path):
    """A timm ViT (keys without ``backbone.``) would leave the whole backbone random."""
    path = str(tmp_path / 'timm.pth')
    torch.save({'blocks.0.attn.qkv.weight': torch.zeros(192, 64)}, path)
    detector = retinanet()
    with pytest.raises(ValueError) as error:
        load_checkpoint(detector, path)
    assert str(error.value).startswith(
        "The checkpoint (keys under 'backbone.') fills only 0% of the ModSquadViT's "
        f'weights (0 of {len(detector.backbone.state_dict())} tensors match in name '
        'and shape); it has no other key. A dense ViT checkpoint')


@pytest.mark.parametrize('experts,layers', [
    (dict(num_experts=4, num_attn_experts=4),
     'backbone.layers.1.ffn has 4 experts in the checkpoint, 8 in the model; '
     'backbone.layers.3.ffn has 4 experts in the checkpoint, 8 in the model.'),
    (dict(num_experts=8, num_attn_experts=8),
     'backbone.layers.0.attn has 8 experts in the checkpoint, 4 in the model; '
     'backbone.layers.2.attn has 8 experts in the checkpoint, 4 in the model.'),
])
def test_other_expert_count_through_load_checkpoint(tmp_path, experts, layers):
    path = str(tmp_path / 'detector.pth')
    torch.save(dict(state_dict=retinanet(**experts).state_dict()), path)
    detector = retinanet(num_experts=8, num_attn_experts=4)
    before = detector.state_dict()['backbone.layers.1.ffn.experts.w1'].clone()
    with pytest.raises(ValueError) as error:
        load_checkpoint(detector, path)
    assert str(error.value).startswith(
        f"The checkpoint's expert counts differ from this ModSquadViT's: {layers} "
        'load_from, tools/test.py, --resume and load_checkpoint need the same counts')
    assert ("init_cfg=dict(type='Pretrained', checkpoint=..., expand_experts=True)"
            in str(error.value))
    # Nothing was half-loaded.
    torch.testing.assert_close(
        detector.state_dict()['backbone.layers.1.ffn.experts.w1'], before)


def test_mixtures_where_the_model_is_dense_name_the_layers():
    """Through ``nn.Module.load_state_dict`` of the backbone alone (no prefix)."""
    moe = make_vit(moe_layers=dict(mlp=[1]))
    with pytest.raises(ValueError, match=r'^The checkpoint has mixtures of experts '
                       r"where this ModSquadViT has dense layers: \['layers.1.ffn'\]. "
                       r"Build the model with the checkpoint's moe_layers.$"):
        make_vit(moe_layers='none').load_state_dict(moe.state_dict())


def test_matching_checkpoint_loads_exactly(tmp_path):
    source = retinanet(num_experts=4)
    path = str(tmp_path / 'detector.pth')
    torch.save(dict(state_dict=source.state_dict()), path)
    target = retinanet(num_experts=4)
    load_checkpoint(target, path)
    loaded = target.state_dict()
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded[key], value, msg=key)


# --- --resume ------------------------------------------------------------------------
class Regressor(BaseModel):
    """A ModSquadViT with a linear head, regressing the image mean."""

    def __init__(self, num_experts: int):
        super().__init__()
        self.backbone = ModSquadViT(arch=TINY, img_size=SIZE, num_experts=num_experts)
        self.head = nn.Linear(TINY['embed_dims'], 1)

    def forward(self, inputs, targets=None, mode='loss'):
        prediction = self.head(self.backbone(torch.stack(inputs))[0])
        return dict(loss=((prediction - torch.stack(targets))**2).mean())


class Images(torch.utils.data.Dataset):

    def __len__(self):
        return 4

    def __getitem__(self, index):
        image = torch.full((3, SIZE, SIZE), float(index))
        return dict(inputs=image, targets=image.mean().view(1))


def make_runner(work_dir, num_experts, **kwargs):
    return Runner(
        model=Regressor(num_experts),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=Images(),
            sampler=dict(type='DefaultSampler', shuffle=False),
            batch_size=2,
            num_workers=0),
        train_cfg=dict(by_epoch=False, max_iters=1),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3)),
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=1, by_epoch=False)),
        default_scope='mmengine',
        experiment_name=f'resume_{num_experts}_{len(kwargs)}',
        **kwargs)


def test_resume_with_other_expert_count_stops_before_the_optimizer(tmp_path):
    make_runner(tmp_path, num_experts=4).train()
    checkpoint = tmp_path / 'iter_1.pth'
    assert checkpoint.exists()

    runner = make_runner(tmp_path, num_experts=8, resume=True, load_from=str(checkpoint))
    runner._train_loop = runner.build_train_loop(runner._train_loop)
    with pytest.raises(ValueError, match=r"^The checkpoint's expert counts differ "
                       r'from this ModSquadViT.s: backbone.layers.1.ffn has 4 experts '
                       r'in the checkpoint, 8 in the model'):
        runner.load_or_resume()
