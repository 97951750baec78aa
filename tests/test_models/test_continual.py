"""Continual learning (ModSquadViT ``continual``): a new task added to a trained demo
model leaves the three old tasks' predictions bit-identical, before and after AdamW
steps with weight decay on the new task; only the new parameters move; hand-counted
trainable parameters; errors."""
import copy

import pytest
import torch
from mmengine.dataset import pseudo_collate
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from mmengine.runner.checkpoint import load_checkpoint
from mmengine.structures import BaseDataElement

from mod_squad.models import ModSquadViT
from mod_squad.models.fine_tuning import count_parameters
from mod_squad.registry import DATASETS, MODELS

OLD = ('cls', 'det', 'seg')
C, L, E_ATTN, E_MLP, HD, H, M = 32, 2, 4, 8, 16, 32, 2
TINY = dict(
    arch=dict(embed_dims=C, num_layers=L, num_heads=2, feedforward_channels=2 * H),
    task_names=('a', 'b'), img_size=32, patch_size=8, num_experts=E_MLP, top_k=2)


def test_trainable_counts_equal_a_hand_count():
    """The new task's embedding (L, C) and routers over E + M experts, and M new
    experts per layer (MoA: q_proj, q_bias, o_proj rows; MLP: w1, b1, w2, b2 rows)."""
    model = ModSquadViT(**dict(TINY, task_names=('a', 'b', 'n')),
                        continual=dict(task='n', num_experts=M))
    routers = (C * (E_ATTN + M) + E_ATTN + M) + (C * (E_MLP + M) + E_MLP + M)
    experts = M * (C * HD + HD + HD * C) + M * (C * H + H + H * C + C)
    trainable, total = count_parameters(model)
    assert trainable == L * C + routers + experts
    old_total = count_parameters(ModSquadViT(**TINY))[1]
    assert total == old_total + L * C + routers + experts
    assert model.trained_experts == {'layers.0.attn': [4, 5], 'layers.1.ffn': [8, 9]}
    only_mlp = ModSquadViT(**dict(TINY, task_names=('a', 'b', 'n')),
                           continual=dict(task='n', num_experts=dict(mlp=M)))
    assert count_parameters(only_mlp)[0] == (
        L * C + (C * E_ATTN + E_ATTN) + (C * (E_MLP + M) + E_MLP + M)
        + M * (C * H + H + H * C + C))


def continual_model_cfg(demo_cfg, **continual):
    """The demo model + a 4th task 'shapes' (a classification branch of its own)."""
    cfg = copy.deepcopy(demo_cfg.model)
    cfg.backbone.task_names = OLD + ('shapes', )
    cfg.backbone.continual = dict(dict(task='shapes', num_experts=M), **continual)
    cfg.branches['shapes'] = copy.deepcopy(cfg.branches['cls'])
    return cfg


def batch(demo_cfg, task, size=2):
    source = 'cls' if task == 'shapes' else task
    dataset = DATASETS.build(copy.deepcopy(
        demo_cfg.train_dataloader.dataset.datasets[source]))
    return pseudo_collate([dict(dataset[i], task=task) for i in range(size)])


def tensors(obj):
    """Every tensor of a prediction (data samples and their nested elements)."""
    if isinstance(obj, BaseDataElement):
        return [t for _, v in sorted(obj.items()) for t in tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in tensors(v)]
    return [obj] if isinstance(obj, torch.Tensor) else []


def predictions(model, batches):
    model.eval()
    with torch.no_grad():
        return {t: tensors(model.val_step(b)) for t, b in batches.items()}


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A 'trained' demo model: every weight moved (routers too), saved with a
    running expert usage; returns the checkpoint path."""
    from conftest import DEMO_CONFIG
    from mmengine.config import Config
    cfg = Config.fromfile(DEMO_CONFIG)
    init_default_scope('mod_squad')
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    usage = {f'backbone.{name}': torch.rand(3, layer.num_experts)
             for name, layer in model.backbone.routed_layers().items()}
    path = tmp_path_factory.mktemp('continual') / 'joint.pth'
    torch.save(dict(state_dict=model.state_dict(), expert_usage_running=usage), path)
    return str(path)


def build(model_cfg, checkpoint):
    init_default_scope('mod_squad')
    torch.manual_seed(1)
    model = MODELS.build(model_cfg)
    model.init_weights()
    load_checkpoint(model, checkpoint, map_location='cpu', strict=False)
    return model


@pytest.mark.parametrize('init', ['fresh', 'copy'])
def test_old_tasks_bit_identical_and_only_new_parameters_train(demo_cfg, trained, init):
    batches = {t: batch(demo_cfg, t) for t in OLD}
    expected = predictions(build(demo_cfg.model, trained), batches)
    extra = dict(init='copy', copy_from='det', usage=trained) if init == 'copy' else {}
    model = build(continual_model_cfg(demo_cfg, **extra), trained)
    for task in OLD:
        got = predictions(model, batches)[task]
        assert len(got) == len(expected[task]) > 0
        assert all(torch.equal(a, b) for a, b in zip(got, expected[task])), task
    joint = torch.load(trained, weights_only=False)
    stacks = model.backbone.state_dict()
    w1 = joint['state_dict']['backbone.layers.1.ffn.experts.w1']
    if init == 'copy':  # the 2 most used experts of det, most used first
        ids = joint['expert_usage_running']['backbone.layers.1.ffn'][1].argsort(
            descending=True, stable=True)[:M]
        assert torch.equal(stacks['layers.1.ffn.experts.w1'][8:], w1[ids])
    assert torch.equal(stacks['layers.1.ffn.experts.w1'][:8], w1)

    optim_wrapper = build_optim_wrapper(model, demo_cfg.optim_wrapper)
    assert optim_wrapper.optimizer.defaults['weight_decay'] > 0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    for _ in range(3):
        model.train_step(batch(demo_cfg, 'shapes'), optim_wrapper)
    after = model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    new_rows = {'backbone.layers.1.ffn.experts.w1': slice(8, None),
                'backbone.layers.0.attn.q_proj': slice(8, None)}  # 2 x heads
    for key, rows in new_rows.items():  # only the new experts' rows moved
        assert torch.equal(after[key][:rows.start], before[key][:rows.start]), key
        assert not torch.equal(after[key][rows], before[key][rows]), key
    params = {k for k, _ in model.named_parameters()}
    assert {k for k in moved if k in params or k in new_rows} == {
        k for k in moved if k.startswith('branches.shapes.') or k.endswith('.shapes')
        or k in new_rows}
    assert any(k.startswith('branches.shapes.') for k in moved)
    assert 'backbone.task_embed.shapes' in moved
    assert {id(p) for p in optim_wrapper.optimizer.state} == {
        id(p) for p in model.parameters() if p.requires_grad}
    for task, values in predictions(model, batches).items():
        assert all(torch.equal(a, b) for a, b in zip(values, expected[task])), task


def test_grown_checkpoint_loads_as_it_is(demo_cfg, trained, tmp_path):
    model = build(continual_model_cfg(demo_cfg), trained)
    path = tmp_path / 'grown.pth'
    torch.save(dict(state_dict=model.state_dict()), path)
    again = build(continual_model_cfg(demo_cfg), str(path))
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_errors(demo_cfg, trained, tmp_path):
    with pytest.raises(ValueError, match=r"block 0 has 8 attn experts to copy 9 new "
                       r"ones from; with init='copy' at most 8"):
        MODELS.build(continual_model_cfg(demo_cfg, num_experts=9, init='copy',
                                         copy_from='cls', usage=trained))
    with pytest.raises(ValueError, match=r"copy_from='shapes' is not an old task"):
        MODELS.build(continual_model_cfg(demo_cfg, init='copy', copy_from='shapes',
                                         usage=trained))
    with pytest.raises(ValueError, match="continual.task='dog' is not one of"):
        ModSquadViT(**TINY, continual=dict(task='dog', num_experts=1))
    with pytest.raises(ValueError, match='continual sets what trains'):
        ModSquadViT(**TINY, continual=dict(task='b', num_experts=1),
                    trainable=dict(mode='routers'))
    with pytest.raises(ValueError, match="init='copy' needs copy_from and usage"):
        ModSquadViT(**TINY, continual=dict(task='b', num_experts=1, init='copy'))
    # an existing task name: the checkpoint already has it
    cfg = continual_model_cfg(demo_cfg)
    cfg.backbone.continual.task = 'det'
    with pytest.raises(ValueError, match="already has a task 'det'"):
        build(cfg, trained)
    # a usage without the task to copy from
    joint = torch.load(trained, weights_only=False)
    state_dict = {k: v for k, v in joint['state_dict'].items()
                  if '.router.' not in k or not k.endswith('.cls')}
    torch.save(dict(state_dict=state_dict,
                    expert_usage_running=joint['expert_usage_running']),
               tmp_path / 'no_cls.pth')
    cfg = continual_model_cfg(demo_cfg, init='copy', copy_from='cls',
                              usage=str(tmp_path / 'no_cls.pth'))
    with pytest.raises(ValueError, match=r"continual.copy_from='cls': trainable.task="
                       r"'cls' has no router in layer backbone.layers.0.attn"):
        build(cfg, trained)
    # the checkpoint's expert counts differ from the trained model's in the config
    cfg = continual_model_cfg(demo_cfg)
    cfg.backbone.num_experts = 6
    with pytest.raises(ValueError, match=r"layers.1.ffn has 8 experts in the "
                       r"checkpoint; adding task 'shapes' expects the trained "
                       r"model's 6 \(then 8 with the new ones\)"):
        build(cfg, trained)
