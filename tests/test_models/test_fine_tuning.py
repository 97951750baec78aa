"""Fine-tuning modes (ModSquadViT ``trainable``): hand-counted trainable parameters,
frozen parameters bit-identical through AdamW with weight decay in a stock
single-task model and in the multi-task demo model, usage sources, errors."""
import copy
import re

import pytest
import torch
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope

from mod_squad.analysis.expert_usage import LayerUsage, UsageReport
from mod_squad.models import ModSquadViT
from mod_squad.models.fine_tuning import (TrainableConfig, count_parameters,
                                          parameter_summary)
from mod_squad.registry import MODELS, toolbox_models

C, E_ATTN, E_MLP, HD, H = 32, 4, 8, 16, 32  # width, experts, head width, expert hidden
TINY = dict(
    arch=dict(embed_dims=C, num_layers=2, num_heads=2, feedforward_channels=2 * H),
    task_names=('a', 'b'), img_size=32, patch_size=8, num_experts=E_MLP, top_k=2,
    router_cfg=dict(init='trunc_normal'))
# by hand: per task, a (L, C) task embedding and the routers' weights and biases
PER_TASK = 2 * C + (C * E_ATTN + E_ATTN) + (C * E_MLP + E_MLP)
MOA_EXPERT = C * HD + HD + HD * C  # q_proj, q_bias, o_proj rows
MLP_EXPERT = C * H + H + H * C + C  # w1, b1, w2, b2 rows
STACK = re.compile(r'backbone\.(layers\.\d+\.(?:attn|ffn))\.'
                   r'(?:experts\.[wb][12]|q_proj|q_bias|o_proj)$')
USAGE = {'layers.0.attn': torch.tensor([5., 1., 9., 0.]),
         'layers.1.ffn': torch.tensor([0., 3., 1., 8., 2., 0., 7., 1.])}


def tiny(**trainable):
    torch.manual_seed(0)
    return ModSquadViT(**TINY, trainable=trainable or None)


@pytest.mark.parametrize('trainable, expected, experts', [
    (dict(), None, {}),
    (dict(mode='heads'), 0, {}),
    (dict(mode='routers'), 2 * PER_TASK, {}),
    (dict(mode='routers', tasks=['b']), PER_TASK, {}),
    (dict(mode='experts', last=1), 2 * PER_TASK + MOA_EXPERT + MLP_EXPERT,
     {'layers.0.attn': [3], 'layers.1.ffn': [7]}),
    (dict(mode='experts', tasks=[], experts={'layers.1.ffn': [0, 5]}),
     2 * MLP_EXPERT, {'layers.1.ffn': [0, 5]}),
    (dict(mode='top_experts', top_n=dict(mlp=3), usage=USAGE),
     2 * PER_TASK + 3 * MLP_EXPERT, {'layers.1.ffn': [1, 3, 6]}),
    # at least k = 2, as ExpertSelection keeps: attn takes the top 2 of 4
    (dict(mode='top_experts', tasks=['a'], top_n=1, usage=USAGE),
     PER_TASK + 2 * MOA_EXPERT + 2 * MLP_EXPERT,
     {'layers.0.attn': [0, 2], 'layers.1.ffn': [3, 6]}),
])
def test_trainable_counts_equal_a_hand_count(trainable, expected, experts):
    model = tiny(**trainable)
    trained, total = count_parameters(model)
    assert total == count_parameters(tiny())[1]  # a split adds no parameter
    assert trained == (total if expected is None else expected)
    assert model.trained_experts == experts


def snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def stepped(model, inputs, steps=3):
    """AdamW with weight decay on ``model``'s loss (optimiser over ALL parameters)."""
    optim_wrapper = build_optim_wrapper(model, dict(
        optimizer=dict(type='AdamW', lr=1e-2, weight_decay=0.5)))
    for _ in range(steps):
        optim_wrapper.update_params(model.loss(*inputs)['loss'])
    return optim_wrapper.optimizer


def check_frozen(before, model, optimizer, experts, moved=True):
    """Every frozen parameter (and frozen expert row) bit-identical, every trainable
    one changed (with ``moved``); optimiser state exactly for the trainable ones."""
    after = model.state_dict()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n for n, _ in model.named_buffers()}
    for key, value in before.items():
        if key in buffers:
            continue
        stack = STACK.match(key)
        ids = experts.get(stack.group(1)) if stack else None
        if ids:
            frozen = [e for e in range(value.shape[0]) if e not in ids]
            assert torch.equal(after[key][frozen], value[frozen]), key
            assert not moved or not torch.equal(after[key][ids], value[ids]), key
        elif key in trainable:
            assert not moved or not torch.equal(after[key], value), key
        else:
            assert torch.equal(after[key], value), key
    assert {id(p) for p in optimizer.state} == {
        id(p) for p in model.parameters() if p.requires_grad}


@pytest.mark.parametrize('trainable', [
    dict(mode='heads'),
    dict(mode='routers'),
    dict(mode='top_experts', top_n=3, usage=USAGE),
    dict(mode='experts', last=2),
])
def test_stock_classifier_frozen_bit_identical(trainable):
    """An mmpretrain ImageClassifier with a ModSquadViT: the head and the mode's
    parameters train, nothing else moves."""
    init_default_scope('mmpretrain')
    torch.manual_seed(0)
    model = toolbox_models('mmpretrain').build(dict(
        type='ImageClassifier',
        backbone=dict(type='mod_squad.ModSquadViT', **dict(TINY, task_names=('a', )),
                      out_type='avg_featmap', trainable=trainable),
        head=dict(type='LinearClsHead', num_classes=3, in_channels=C)))
    from mmpretrain.structures import DataSample
    inputs = (torch.randn(4, 3, 32, 32),
              [DataSample().set_gt_label(i % 3) for i in range(4)])
    before = snapshot(model)
    optimizer = stepped(model, inputs)
    check_frozen(before, model, optimizer, model.backbone.trained_experts)
    assert all(p.requires_grad for p in model.head.parameters())
    assert all(p.requires_grad for p in model.backbone.outputs.parameters())
    model.train()
    assert model.backbone.layers.training == (trainable['mode'] != 'heads')


@pytest.mark.parametrize('trainable', [
    dict(mode='routers', tasks=['det']),
    dict(mode='experts', last=dict(mlp=2, attn=1)),
])
def test_multi_task_model_frozen_bit_identical(demo_cfg, trainable):
    """The demo model: steps of every task; the branches and the mode's backbone
    parameters train, the rest of the backbone stays bit-identical."""
    from test_multi_task_model import task_batch
    demo_cfg.model.backbone.trainable = trainable
    init_default_scope('mod_squad')
    model = MODELS.build(demo_cfg.model)
    model.init_weights()
    optim_wrapper = build_optim_wrapper(model, demo_cfg.optim_wrapper)
    assert optim_wrapper.optimizer.defaults['weight_decay'] > 0
    before = snapshot(model)
    for task in ('cls', 'det', 'seg'):
        model.train_step(task_batch(demo_cfg, task), optim_wrapper)
    # (experts no token was routed to keep their values: zero-initialised routers)
    check_frozen(before, model, optim_wrapper.optimizer,
                 model.backbone.trained_experts, moved=False)
    assert not any(torch.equal(before[k], v) for k, v in model.state_dict().items()
                   if k.startswith('branches.') and k.endswith('head.conv_seg.weight'))
    trainable_names = {n for n, p in model.named_parameters() if p.requires_grad}
    routers = {n for n in trainable_names if n.startswith('backbone.')
               and 'parametrizations' not in n}
    if trainable['mode'] == 'routers':
        assert routers and all(n.endswith('.det') for n in routers)
    assert {n for n in trainable_names if not n.startswith('backbone.')} == {
        n for n, _ in model.named_parameters() if not n.startswith('backbone.')}


def test_partly_trained_checkpoint_loads_into_an_ordinary_backbone():
    model = tiny(mode='experts', last=2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.rand_like(p))
    plain = tiny()
    plain.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    model.eval(), plain.eval()
    assert torch.equal(model(x, 'a')[0], plain(x, 'a')[0])
    back = tiny(mode='top_experts', top_n=2, usage=USAGE)
    back.load_state_dict(plain.state_dict())
    assert torch.equal(back.eval()(x, 'b')[0], plain(x, 'b')[0])


def test_usage_from_checkpoint_and_usage_json(tmp_path):
    """A checkpoint's running usage (rows in its routers' task order) and a
    usage.json pick the same experts as the usage itself."""
    share = {f'backbone.{name}': torch.stack([usage.flip(0), usage])
             for name, usage in USAGE.items()}
    state_dict = {f'{name}.router.weight.{task}': torch.zeros(1)
                  for name in share for task in ('x', 'a')}
    torch.save(dict(state_dict=state_dict, expert_usage_running=share),
               tmp_path / 'iter_1.pth')
    UsageReport(['x', 'a'], [
        LayerUsage(f'backbone.{name}', 'MLP', dict(x=2, a=2), share[
            f'backbone.{name}'].long(), share[f'backbone.{name}'].double(),
                   torch.ones(2, dtype=torch.long)) for name in USAGE
    ]).save(str(tmp_path / 'usage.json'))
    expected = tiny(mode='top_experts', top_n=3, usage=USAGE).trained_experts
    for source in ('iter_1.pth', 'usage.json'):
        model = tiny(mode='top_experts', task='a', top_n=3, usage=str(tmp_path / source))
        assert model.trained_experts == expected
    with pytest.raises(ValueError, match=r"task='b' has no router in layer "
                       r"backbone.layers.0.attn .* tasks are \['x', 'a'\]"):
        tiny(mode='top_experts', task='b', top_n=3, usage=str(tmp_path / 'iter_1.pth'))
    with pytest.raises(ValueError, match=r"task='b' is not in .*usage.json, whose "
                       r"tasks are \['x', 'a'\]"):
        tiny(mode='top_experts', task='b', top_n=3, usage=str(tmp_path / 'usage.json'))
    torch.save(dict(state_dict=state_dict), tmp_path / 'plain.pth')
    with pytest.raises(ValueError, match="has no 'expert_usage_running'"):
        tiny(mode='top_experts', task='a', top_n=3, usage=str(tmp_path / 'plain.pth'))


@pytest.mark.parametrize('trainable, message', [
    (dict(mode='lora'), r"trainable mode must be one of \('full', 'routers'"),
    (dict(mode='adapters'), r"trainable mode 'adapters' needs adapters: add "
     r"adapter=dict\(type='vmt', dims=...\)"),
    (dict(mode='routers', tasks=['c']),
     r"trainable.tasks names unknown tasks \['c'\]; this ModSquadViT has tasks "
     r"\['a', 'b'\]"),
    (dict(mode='routers', last=2), r"mode 'routers' does not take \['last'\]"),
    (dict(mode='top_experts', top_n=2), 'needs top_n and usage'),
    (dict(mode='top_experts', top_n=dict(mlp=9), usage=USAGE),
     r'top_n=9 for layers.1.ffn: must be an int in \[1, 8\]'),
    (dict(mode='top_experts', top_n=2, usage={'layers.1.ffn': USAGE['layers.1.ffn']}),
     r"The usage has no layer layers.0.attn; it has \['layers.1.ffn'\]"),
    (dict(mode='top_experts', top_n=2, usage='x.pth'), 'needs the task whose usage'),
    (dict(mode='experts', last=9), r'last=9 for layers.0.attn: must be an int in '
     r'\[1, 4\]'),
    (dict(mode='experts', experts={'layers.1.ffn': [2, 8]}),
     r'trainable experts of layers.1.ffn: Trainable experts \[8\] are out of range'),
    (dict(mode='experts', experts={'layers.2.ffn': [0]}),
     r"unknown layers \['layers.2.ffn'\]; the routed layers are \['layers.0.attn', "
     r"'layers.1.ffn'\]"),
    (dict(mode='experts'), 'needs one of experts'),
    (dict(mode='full', tasks=['a']), r"mode 'full' does not take \['tasks'\]"),
    (dict(mode='routers', lr=1.), r"Unknown trainable keys \['lr'\]"),
])
def test_bad_modes_name_the_culprit(trainable, message):
    with pytest.raises(ValueError, match=message):
        tiny(**trainable)


def test_parameter_summary_per_part():
    init_default_scope('mmpretrain')
    model = toolbox_models('mmpretrain').build(dict(
        type='ImageClassifier',
        backbone=dict(type='mod_squad.ModSquadViT', **copy.deepcopy(TINY),
                      trainable=dict(mode='routers', tasks=['a'])),
        head=dict(type='LinearClsHead', num_classes=3, in_channels=C)))
    backbone_total = count_parameters(tiny())[1]
    assert parameter_summary(model) == [
        ('backbone', PER_TASK, backbone_total),
        ('head', C * 3 + 3, C * 3 + 3),
        ('total', PER_TASK + C * 3 + 3, backbone_total + C * 3 + 3)]
    assert TrainableConfig.build(None).mode == 'full'


def test_fine_tuning_config_builds_a_routers_only_model(demo_cfg):
    from mmengine.config import Config
    cfg = Config.fromfile(
        'configs/mod_squad/mod-squad_vit-demo_routers-ft-500_synthetic-cls-det-seg.py')
    assert [h['type'] for h in cfg.custom_hooks][-1] == 'TrainableParamsHook'
    init_default_scope('mod_squad')
    backbone = MODELS.build(cfg.model).backbone
    trained = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith(('task_embed.', 'layers.')) for n in trained)
    assert all('.router.' in n for n in trained if n.startswith('layers.'))
