"""ViTOutputs: output types, their errors, and checkpoint keys of its submodules."""
import pytest
import torch
from mmpretrain.models import VisionTransformer

from mod_squad.models import ModSquadViT, ViTOutputs

TINY = dict(embed_dims=64, num_layers=4, num_heads=2, feedforward_channels=256)


def make_vit(**kwargs):
    model = ModSquadViT(arch=TINY, img_size=64, **kwargs)
    model.init_weights()
    return model.eval()


def test_featmap_cls_token_gives_dpt_pairs():
    """mmseg ViT's ``output_cls_token=True`` format: [(B, C, h, w), (B, C)] per block."""
    x = torch.randn(2, 3, 64, 96)
    model = make_vit(out_type='featmap_cls_token', out_indices=(1, 3))
    pairs = model(x)
    assert [(tuple(m.shape), tuple(c.shape)) for m, c in pairs] == [
        ((2, 64, 4, 6), (2, 64))] * 2
    for out_type, index in (('featmap', 0), ('cls_token', 1)):
        model.outputs = ViTOutputs(out_type, (1, 3), 64, 4, 1)
        for pair, out in zip(pairs, model(x)):
            torch.testing.assert_close(pair[index], out)


@pytest.mark.parametrize('args,message', [
    (dict(out_type='tokens'), "Unsupported out_type 'tokens', choose from"),
    (dict(out_type='featmap_cls_token', num_extra_tokens=0),
     "out_type='featmap_cls_token' needs a backbone with_cls_token=True"),
    (dict(out_indices=(0, 4)), r'out_indices \[0, 4\] out of range for 4 layers'),
    (dict(out_type='pyramid', out_indices=(1, 2)),
     r"out_type='pyramid' rescales one block's map to every scale, or block i to "
     r'scale i: got out_indices \[1, 2\] for pyramid_scales \(4, 2, 1, 0.5\)'),
], ids=['unknown', 'no_cls_token', 'out_of_range', 'pyramid_levels'])
def test_configuration_errors(args, message):
    kwargs = dict(out_type='featmap', out_indices=-1, embed_dims=64, num_layers=4,
                  num_extra_tokens=1)
    with pytest.raises(ValueError, match=message):
        ViTOutputs(**dict(kwargs, **args))


def test_mmpretrain_avg_featmap_norm_upcycles_into_outputs_ln2():
    """mmpretrain's ``ln2`` (MAE's ``fc_norm``) and ``ln1`` land in ModSquadViT."""
    vit = VisionTransformer(arch=TINY, img_size=64, out_type='avg_featmap')
    for param in vit.parameters():
        torch.nn.init.normal_(param, std=0.05)
    vit.eval()
    model = make_vit(moe_layers='none', task_embed=False, out_type='avg_featmap')
    model.load_pretrained(vit.state_dict())
    torch.testing.assert_close(model.outputs.ln2.weight, vit.ln2.weight)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model(x)[0], vit(x)[0])


@pytest.mark.parametrize('out_type,module', [('avg_featmap', 'ln2'),
                                             ('pyramid', 'pyramid')])
def test_checkpoints_with_owner_level_keys_load(out_type, module):
    """``ln2.*`` / ``pyramid.*`` directly under the backbone (mmpretrain's layout,
    mod_squad before ViTOutputs) load into ``outputs.*``, strictly."""
    kwargs = dict(out_type=out_type, with_cls_token=out_type != 'pyramid')
    source = make_vit(**kwargs)
    for param in source.outputs.parameters():
        torch.nn.init.normal_(param)
    state_dict = {k.replace('outputs.', ''): v for k, v in source.state_dict().items()}
    assert any(k.startswith(f'{module}.') for k in state_dict)
    model = make_vit(**kwargs)
    model.load_state_dict(state_dict, strict=True)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, msg=key)


def test_view_loads_owner_level_keys(demo_cfg):
    from mmengine.registry import init_default_scope

    from mod_squad.registry import MODELS
    init_default_scope('mod_squad')
    demo_cfg.model.branches.det.backbone.pyramid_scales = (2, 1)  # with weights
    source, model = MODELS.build(demo_cfg.model), MODELS.build(demo_cfg.model)
    view = 'branches.det.backbone.'
    state_dict = {k.replace(f'{view}outputs.', view): v
                  for k, v in source.state_dict().items()}
    assert f'{view}pyramid.layers.0.weight' in state_dict
    model.load_state_dict(state_dict, strict=True)
    pyramids = [m.branches.det.backbone.outputs.pyramid for m in (model, source)]
    torch.testing.assert_close(pyramids[0].layers[0].weight, pyramids[1].layers[0].weight)
