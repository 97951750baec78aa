"""Adapter mode of ModSquadViT: fresh adapters change nothing, and
``trainable=dict(mode='adapters')`` trains the adapters (and the heads) only, in the
multi-task model and a stock model."""
import copy

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmpretrain.structures import DataSample

from mod_squad.analysis.extraction import extract_task_model
from mod_squad.models import ModSquadViT
from mod_squad.moe.adapter import adapter_modules
from test_analysis.test_extraction import NO_WORKERS, outputs, route_to_kept
from test_models.test_multi_task_model import (TASKS, build_model, changed, snapshot,
                                               task_batch)

TINY = dict(embed_dims=64, num_layers=4, num_heads=2, feedforward_channels=256)
ADAPTER_CONFIG = ('configs/mod_squad/'
                  'mod-squad_vit-demo_vmt-adapter-r16_1k_synthetic-cls-det-seg.py')


def make_vit(**kwargs):
    torch.manual_seed(0)
    model = ModSquadViT(arch=TINY, img_size=32, patch_size=8, task_names=TASKS,
                        num_experts=4, top_k=2, **kwargs)
    model.init_weights()
    return model


def is_adapter(name):
    return '.adapter.' in f'.{name}'


@pytest.mark.parametrize('variant', ['vmt', 'vmt_lite'])
def test_fresh_adapters_keep_a_checkpoints_outputs_exactly(variant):
    """A trained checkpoint plus fresh adapters computes bit-identical outputs for
    every task; its state dict keeps the checkpoint's keys and adds adapter keys."""
    plain = make_vit(out_type='featmap', out_indices=(1, 3))
    for name, param in plain.named_parameters():  # tasks route differently
        if 'router' in name or 'task_embed' in name:
            torch.nn.init.normal_(param, std=0.5)
    adapted = make_vit(out_type='featmap', out_indices=(1, 3),
                       adapter=dict(type=variant, dims=8))
    adapted.load_pretrained(plain.state_dict())
    plain.eval(), adapted.eval()
    x = torch.randn(2, 3, 32, 32)
    for task in TASKS:
        for ours, theirs in zip(adapted(x, task), plain(x, task)):
            assert torch.equal(ours, theirs), task
    keys = set(adapted.state_dict())
    assert {k for k in keys if not is_adapter(k)} == set(plain.state_dict())
    assert {k for k in keys if k.startswith('layers.0.adapter.')} == {
        f'layers.0.adapter.{n}' for n in
        ['down_weight', 'down_bias', 'up_bias'] + ['up_weight'] * (variant == 'vmt') +
        [f'task_{p}.{t}' for p in ('scale', 'shift') for t in TASKS]}


def test_adapters_in_chosen_blocks_and_in_parallel_to_the_mlp():
    model = make_vit(adapter=dict(dims=4, blocks=[1, -1]))
    with_adapter = [i for i, layer in enumerate(model.layers) if layer.adapter]
    assert with_adapter == [1, 3]
    # the adapter's output is added to the MoE MLP's: with the experts at zero, the
    # block adds exactly the adapter's output of the normed tokens
    block = model.layers[1].eval()
    assert block.is_moe_mlp and not block.is_moa
    torch.nn.init.normal_(block.adapter.task_scale['det'])
    for p in block.ffn.experts.parameters():
        torch.nn.init.zeros_(p)
    x = torch.randn(2, 17, 64)
    h = x + block.attn(block.ln1(x))
    expected = h + block.adapter(block.ln2(h), 'det')
    assert expected.ne(h).any()
    torch.testing.assert_close(block(x, 'det', (4, 4)), expected)


def hand_count(embed_dims, num_layers, r, num_tasks, lite=False):
    """down (r C + r), up (C r, not in Lite), up bias C, scale and shift 2 r per task."""
    return num_layers * (r * embed_dims + r + (0 if lite else embed_dims * r) +
                         embed_dims + num_tasks * 2 * r)


@pytest.mark.parametrize('variant', ['vmt', 'vmt_lite'])
def test_adapters_mode_trains_only_adapters_and_heads_of_every_task(demo_cfg, variant):
    """AdamW steps with weight decay on each task, twice: the adapters' shared
    projections and the running task's module move, the other tasks' modules and
    every other backbone parameter stay bit-identical and get no optimiser state;
    the running task's head trains."""
    demo_cfg.model.backbone.adapter = dict(type=variant, dims=8)
    demo_cfg.model.backbone.trainable = dict(mode='adapters')
    model = build_model(demo_cfg)
    backbone = model.backbone
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in backbone.named_parameters() if is_adapter(n)}
    assert sum(backbone.get_parameter(n).numel() for n in trainable) == hand_count(
        128, 6, 8, 3, lite=variant == 'vmt_lite')  # 13392 / 7248
    assert all(p.requires_grad for p in model.branches.parameters())
    optim_wrapper = build_optim_wrapper(model, demo_cfg.optim_wrapper)
    assert optim_wrapper.optimizer.defaults['weight_decay'] > 0
    start = snapshot(backbone)
    shared = {n for n in trainable if '.task_' not in n}
    for step, task in enumerate(TASKS * 2):
        before, head = snapshot(backbone), snapshot(model.branches[task])
        model.train_step(task_batch(demo_cfg, task), optim_wrapper)
        moved = changed(before, backbone)
        task_modules = {n for n in trainable if n.endswith(f'.{task}')}
        assert task_modules <= moved <= shared | task_modules, moved
        if step >= len(TASKS):  # the task modules left zero: gradients reach all
            assert shared <= moved, shared - moved
        assert changed(head, model.branches[task])
    assert not changed(start, backbone) - trainable
    state = optim_wrapper.optimizer.state
    assert all(p not in state for n, p in backbone.named_parameters()
               if n not in trainable)


def test_stock_single_task_model_with_adapters(build_in_scope):
    """An mmpretrain ImageClassifier around a ModSquadViT in adapter mode: one task
    (the default), only the adapters, the head and the output norm (the head's
    side, as in every fine-tuning mode) train."""
    model = build_in_scope('mmpretrain', dict(
        type='ImageClassifier',
        data_preprocessor=dict(type='ClsDataPreprocessor', num_classes=3),
        backbone=dict(type='mod_squad.ModSquadViT', arch=TINY, img_size=32,
                      patch_size=8, num_experts=4, top_k=2, out_type='avg_featmap',
                      adapter=dict(type='vmt_lite', dims=4),
                      trainable=dict(mode='adapters')),
        head=dict(type='LinearClsHead', num_classes=3, in_channels=64,
                  loss=dict(type='CrossEntropyLoss'))))
    model.init_weights()
    assert list(adapter_modules(model.backbone)) == [f'layers.{i}.adapter'
                                                     for i in range(4)]
    optim_wrapper = build_optim_wrapper(model, dict(
        optimizer=dict(type='AdamW', lr=1e-2, weight_decay=0.1)))
    batch = dict(inputs=[torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8)
                         for _ in range(2)],
                 data_samples=[DataSample().set_gt_label(i) for i in range(2)])
    before = snapshot(model)
    for _ in range(2):
        model.train_step(batch, optim_wrapper)
    moved = changed(before, model)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters()
        if is_adapter(n) or n.startswith(('head.', 'backbone.outputs.'))}
    assert moved and all(is_adapter(n) or n.startswith(('head.', 'backbone.outputs.'))
                         for n in moved), moved
    assert {'head.fc.weight', 'backbone.outputs.ln2.weight',
            'backbone.layers.0.adapter.down_weight'} <= moved


def test_config_example_builds_adapter_mode(build_in_scope):
    cfg = Config.fromfile(ADAPTER_CONFIG)
    assert cfg.load_from and cfg.model.backbone.router_cfg.aux_loss.mi_weight == 0
    model = build_in_scope('mod_squad', cfg.model)
    frozen = [n for n, p in model.backbone.named_parameters() if not p.requires_grad]
    trainable = [n for n, p in model.backbone.named_parameters() if p.requires_grad]
    assert frozen and all(is_adapter(n) for n in trainable)
    assert sum(model.backbone.get_parameter(n).numel()
               for n in trainable) == hand_count(128, 6, 16, 3)  # 26016


@pytest.mark.parametrize('adapter, message', [
    (dict(blocks=[4]), r'adapter blocks must be block indices in \[0, 4\), got \[4\]'),
    (dict(blocks=[]), r'adapter blocks must be block indices in \[0, 4\), got \[\]'),
    (dict(type='vmt', r=8), r"Unknown adapter keys \['r'\]"),
    (dict(type='houlsby'), "adapter variant must be one of"),
])
def test_bad_adapter_options_name_the_culprit(adapter, message):
    with pytest.raises(ValueError, match=message):
        make_vit(adapter=copy.deepcopy(adapter))


def test_extracting_a_task_keeps_its_adapter(demo_cfg):
    """Decomposition of a model trained in adapter mode: the extracted stock model
    holds the shared projections and the task's module only, and predicts exactly
    as the joint model's branch."""
    demo_cfg.merge_from_dict(NO_WORKERS)
    demo_cfg.model.backbone.adapter = dict(type='vmt_lite', dims=8)
    model = build_model(demo_cfg).eval()
    for name, param in model.backbone.named_parameters():
        if is_adapter(name):
            torch.nn.init.normal_(param, std=0.1)
    kept = route_to_kept(model, 'seg', token_dependent=False)
    extracted = extract_task_model(demo_cfg, model, 'seg', kept)
    backbone = extracted.model.backbone
    assert backbone.adapter_cfg.variant == 'vmt_lite'
    assert sorted(n for n, _ in backbone.named_parameters()
                  if n.startswith('layers.0.adapter.')) == [
        f'layers.0.adapter.{n}' for n in ('down_bias', 'down_weight', 'task_scale.seg',
                                          'task_shift.seg', 'up_bias')]
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    full, small = outputs(model.branches['seg'], x), outputs(extracted.model, x)
    assert len(full) == len(small) > 0
    assert all(torch.equal(a, b) for a, b in zip(full, small))
