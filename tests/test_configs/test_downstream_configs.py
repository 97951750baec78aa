"""The downstream configs (``configs/mod_squad/downstream/``, README "Downstream: which
part to fine-tune"): one schedule and data for every mode, the demo checkpoint as
start, and each mode's model, built on the demo's backbone without training, trains
the hand-counted parameters; the extracted model is what the extraction tool writes
for ``--keep 4``, and loads its checkpoint."""
import glob

import pytest
import torch
from conftest import DEMO_CONFIG
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner.checkpoint import load_checkpoint

from mod_squad.analysis import build_model
from mod_squad.analysis.extraction import extract_task_model, select_experts
from mod_squad.models.fine_tuning import count_parameters
from mod_squad.moe import ExpertSelection
from mod_squad.registry import MODELS

D = 'configs/mod_squad/downstream/'
DEMO = 'work_dirs/demo/iter_2000.pth'
EXTRACTED = 'work_dirs/downstream/extract/cls_extracted.pth'
MODES = dict(
    full='mod-squad-vit-demo_full_500it_synthetic-downstream.py',
    routers='mod-squad-vit-demo_routers_500it_synthetic-downstream.py',
    top_experts='mod-squad-vit-demo_top-experts-4_500it_synthetic-downstream.py',
    continual='mod-squad-vit-demo_continual-m2_500it_synthetic-downstream.py',
    adapter='mod-squad-vit-demo_vmt-adapter-r16_500it_synthetic-downstream.py',
    extracted='mod-squad-vit-demo-extracted-keep4_full_500it_synthetic-downstream.py')
# the demo's backbone: width, blocks, experts per layer, head width, expert hidden
C, L, E, HD, H = 128, 6, 8, 32, 256
NUM_CLASSES = 12
HEAD = C * NUM_CLASSES + NUM_CLASSES
MOA_EXPERT = C * HD + HD + HD * C  # q_proj, q_bias, o_proj rows
MLP_EXPERT = C * H + H + H * C + C  # w1, b1, w2, b2 rows
# what the extraction drops: 4 of 8 experts and router columns in every layer
DROPPED = 3 * 4 * (MOA_EXPERT + MLP_EXPERT) + L * 4 * (C + 1)


def routers(num_experts=E):
    """A task's embedding (L, C) and routers' weights and biases."""
    return L * C + L * (C * num_experts + num_experts)


def load(mode):
    return Config.fromfile(D + MODES[mode])


def shapes(model):
    """Shapes of a stock classifier's weights but its head's."""
    return {k: v.shape for k, v in model.state_dict().items()
            if not k.startswith('head.')}


def test_every_config_is_listed_and_the_runs_share_data_and_schedule():
    assert sorted(glob.glob(D + '*.py')) == sorted(D + f for f in MODES.values())
    full = load('full')
    for mode in MODES:
        cfg = load(mode)
        assert cfg.train_cfg.max_iters == 500 and cfg.train_cfg.val_interval == 500
        assert cfg.param_scheduler == full.param_scheduler
        assert cfg.optim_wrapper == full.optim_wrapper
        assert cfg.randomness == full.randomness
        train, val = cfg.train_dataloader, cfg.val_dataloader
        if mode == 'continual':  # one task of a multi-task model
            assert train.batch_sampler.batch_sizes == {'downstream': 32}
            train, val = train.dataset.datasets.downstream, val.downstream
            assert cfg.model.branches.downstream.head.num_classes == NUM_CLASSES
            assert cfg.val_evaluator == {'downstream': full.val_evaluator}
        else:
            assert train.batch_size == 32 and cfg.val_evaluator == full.val_evaluator
            assert cfg.model.head.num_classes == NUM_CLASSES
            train = train.dataset
        for loader in (cfg.train_dataloader, val):
            assert loader.num_workers <= 1
        assert train == full.train_dataloader.dataset
        assert val == full.val_dataloader
        assert len(train.classes) == NUM_CLASSES
        assert cfg.load_from == (EXTRACTED if mode == 'extracted' else DEMO)
        assert cfg.custom_hooks == [dict(type='TrainableParamsHook')]


@pytest.fixture(scope='module')
def joint(tmp_path_factory):
    """The demo model (seeded, untrained) saved with a running expert usage, as
    the demo's checkpoint; returns its config and the checkpoint path."""
    cfg = Config.fromfile(DEMO_CONFIG)
    init_default_scope('mod_squad')
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    usage = {f'backbone.{name}': torch.rand(3, layer.num_experts)
             for name, layer in model.backbone.routed_layers().items()}
    path = str(tmp_path_factory.mktemp('downstream') / 'joint.pth')
    torch.save(dict(state_dict=model.state_dict(), expert_usage_running=usage), path)
    return cfg, model, path


def build(mode, checkpoint):
    cfg = load(mode)
    backbone = cfg.model.backbone
    if mode == 'top_experts':
        backbone.trainable.usage = checkpoint
    if mode == 'continual':
        backbone.continual.usage = checkpoint
    return build_model(cfg)


@pytest.mark.parametrize('mode, trainable', [
    ('full', None),
    ('routers', routers() + HEAD),
    # 4 of the 8 experts of every MoA and MoE MLP, 3 of each
    ('top_experts', routers() + 3 * 4 * (MOA_EXPERT + MLP_EXPERT) + HEAD),
    # per block: down C -> 16 and up 16 -> C with biases, a scale and shift of 16
    ('adapter', L * (C * 16 + 16 + 16 * C + C + 2 * 16) + HEAD),
    # the new task's routers over 8 + 2 experts, 2 new experts per layer
    ('continual', routers(E + 2) + 3 * 2 * (MOA_EXPERT + MLP_EXPERT) + HEAD),
    ('extracted', None),
])
def test_each_mode_trains_the_hand_counted_parameters(joint, mode, trainable):
    _, demo, path = joint
    model = build(mode, path)
    trained, total = count_parameters(model)
    assert trained == (total if trainable is None else trainable)
    # the demo's backbone (3 tasks) for 'cls' alone, with a new head
    single_task = sum(p.numel() for p in demo.backbone.parameters()) - 2 * routers()
    if mode == 'adapter':
        expected = single_task + trainable  # + the adapters
    elif mode == 'continual':
        expected = single_task + 2 * routers() + trainable  # old routers kept
    elif mode == 'extracted':
        expected = single_task - DROPPED + HEAD
    else:
        expected = single_task + HEAD
    assert total == expected


def test_extracted_config_is_the_extraction_with_keep_4(joint):
    cfg, demo, _ = joint
    usage = {name: torch.rand(layer.num_experts)
             for name, layer in demo.backbone.routed_layers().items()}
    kept = select_experts(demo, 'cls', {f'backbone.{k}': v for k, v in usage.items()},
                          ExpertSelection(keep=4))
    extracted = extract_task_model(cfg, demo, 'cls', kept)
    assert shapes(build('extracted', None)) == shapes(extracted.model)


def test_extracted_config_loads_the_extraction_checkpoint(joint, tmp_path):
    cfg, demo, _ = joint
    kept = {name: [0, 2, 5, 7] for name in
            (f'backbone.{n}' for n in demo.backbone.routed_layers())}
    paths = extract_task_model(cfg, demo, 'cls', kept).save(str(tmp_path))
    model = build('extracted', None)
    load_checkpoint(model, paths['checkpoint'], map_location='cpu', strict=False,
                    logger='silent')
    source = torch.load(paths['checkpoint'])['state_dict']
    for key, value in model.state_dict().items():
        if not key.startswith('head.'):
            assert torch.equal(value, source[key]), key
