"""The baselines of the joint demo (``configs/mod_squad/baselines/``, README "Joint vs
single-task"): each single-task config is the demo's stock branch model with the demo's
backbone for one task, trained for the iterations its task gets in the joint run; the
dense joint config is the demo with no mixture anywhere. Each trains one iteration and
validates with its stock evaluator on a small copy of the synthetic data."""
import pytest
from conftest import DEMO_CONFIG, DEMO_DATA_ROOT, retarget
from mmengine.config import Config
from mmengine.runner import Runner

BASELINES = 'configs/mod_squad/baselines/'
SINGLE_TASK = dict(
    cls=('mod-squad-vit-demo_linear_617it_synthetic-cls.py', 'accuracy/top1'),
    det=('retinanet_mod-squad-vit-demo_fpn_649it_synthetic-det.py', 'coco/bbox_mAP'),
    seg=('upernet_mod-squad-vit-demo_mln_734it_synthetic-seg.py', 'mIoU'))
DENSE_JOINT = 'dense-vit-demo_2k_synthetic-cls-det-seg.py'
VIEW_ARGS = ('out_type', 'out_indices', 'pyramid_scales')


def load(name, root=None):
    cfg = Config.fromfile(BASELINES + name)
    return cfg if root is None else Config(
        retarget(cfg.to_dict(), DEMO_DATA_ROOT, f'{root}/'))


def train_and_validate(cfg, work_dir, iters):
    """Train ``iters`` iterations (no validation during training), then validate;
    returns the runner and the metrics."""
    cfg.train_cfg.update(max_iters=iters, val_begin=iters + 1)
    cfg.default_hooks.checkpoint.interval = iters
    loaders = [cfg.train_dataloader, cfg.val_dataloader]
    if 'dataset' not in cfg.val_dataloader:  # multi-task: one loader per task
        loaders = [cfg.train_dataloader, *cfg.val_dataloader.values()]
    for loader in loaders:
        loader.update(num_workers=0, persistent_workers=False)
    cfg.val_dataloader = cfg.test_dataloader = cfg.val_dataloader
    cfg.work_dir = str(work_dir)
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner, runner.val()


@pytest.mark.parametrize('task', sorted(SINGLE_TASK))
def test_single_task_model_is_the_demo_branch_with_the_demo_backbone(task):
    cfg, demo = load(SINGLE_TASK[task][0]), Config.fromfile(DEMO_CONFIG)
    branch = demo.model.branches[task]
    assert {k: v for k, v in cfg.model.items() if k != 'backbone'} == {
        k: v for k, v in branch.items() if k != 'backbone'}
    backbone = cfg.model.backbone
    assert backbone.type == 'mod_squad.ModSquadViT'
    assert backbone.task_names == (task, ) and backbone.router_cfg is None
    for key, value in demo.model.backbone.items():
        if key not in ('type', 'task_names', 'router_cfg'):
            assert backbone[key] == value, key
    for key in VIEW_ARGS:
        assert backbone.get(key) == branch.backbone.get(key), key
    assert cfg.val_evaluator == demo.val_evaluator[task]
    assert cfg.val_dataloader.dataset == demo.val_dataloader[task].dataset
    assert cfg.train_dataloader.dataset == demo.train_dataloader.dataset.datasets[task]
    assert cfg.train_dataloader.batch_size == (
        demo.train_dataloader.batch_sampler.batch_sizes[task])
    assert cfg.optim_wrapper == demo.optim_wrapper


def test_single_task_iterations_are_the_tasks_share_of_the_joint_run(demo_cfg):
    from mmengine.dataset import DefaultSampler

    from mod_squad.datasets import TaskBatchSampler
    from mod_squad.registry import DATASETS
    dataset = DATASETS.build(demo_cfg.train_dataloader.dataset)
    loader = demo_cfg.train_dataloader.batch_sampler
    sampler = TaskBatchSampler(
        DefaultSampler(dataset, seed=0), batch_sizes=loader.batch_sizes,
        ratios=loader.ratios)
    draws = [sampler.task_at(i) for i in range(demo_cfg.train_cfg.max_iters)]
    for task, (name, _) in SINGLE_TASK.items():
        cfg = load(name)
        iters = cfg.train_cfg.max_iters
        assert iters == draws.count(task) and f'_{iters}it_' in name
        # the demo's warm-up (100 of 2000) and cosine, scaled to the task's iterations
        warmup, cosine = cfg.param_scheduler
        assert (warmup.type, warmup.begin, warmup.end) == (
            'LinearLR', 0, 100 * iters // 2000)
        assert (cosine.type, cosine.begin, cosine.end) == (
            'CosineAnnealingLR', warmup.end, iters)
        assert cfg.train_cfg.val_interval == cfg.default_hooks.checkpoint.interval == iters


@pytest.mark.parametrize('task', sorted(SINGLE_TASK))
def test_single_task_config_trains_and_validates_with_the_stock_evaluator(
        task, synthetic_root, tmp_path):
    name, metric = SINGLE_TASK[task]
    cfg = load(name, synthetic_root)
    if task == 'det':  # keep every box of the untrained detector: CocoMetric scores
        cfg.model.test_cfg.score_thr = 0.
    _, metrics = train_and_validate(cfg, tmp_path, iters=1)
    assert metric in metrics and 0 <= metrics[metric] <= 100


def test_dense_joint_config_shares_every_backbone_weight(synthetic_root, tmp_path):
    from mod_squad.moe import RoutedLayer
    cfg = load(DENSE_JOINT, synthetic_root)
    demo = Config.fromfile(DEMO_CONFIG)
    assert {k: v for k, v in cfg.model.items() if k != 'backbone'} == {
        k: v for k, v in demo.model.items() if k != 'backbone'}
    cfg.model.branches.det.test_cfg.score_thr = 0.
    runner, metrics = train_and_validate(cfg, tmp_path, iters=3)
    assert {'cls/accuracy/top1', 'det/coco/bbox_mAP', 'seg/mIoU'} <= set(metrics)
    backbone = runner.model.backbone
    assert not any(isinstance(m, RoutedLayer) for m in backbone.modules())
    assert not any('task_embed' in name for name, _ in backbone.named_parameters())
    # every block has the demo's dense MLP width (= k experts of its MoE MLP)
    assert all(layer.ffn.layers[0][0].out_features == 512 for layer in backbone.layers)
