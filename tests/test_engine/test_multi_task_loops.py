"""MultiTaskValLoop / MultiTaskTestLoop: every task's stock dataset and evaluator
in one loop, driven by a stand-in model that predicts the ground truth."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.runner import Runner

from mod_squad.engine.multi_task_loops import (MultiTaskTestLoop,
                                               MultiTaskValLoop, metrics_table,
                                               restrict_tasks)

# (images, batch size) per task: 3, 2 and 1 batches.
SIZES = dict(cls=(12, 4), det=(4, 2), seg=(3, 3))
PERFECT = {
    'cls/accuracy/top1': 100.0,
    'cls/accuracy/top5': 100.0,
    'det/coco/bbox_mAP': 1.0,
    'det/coco/segm_mAP': 1.0,
    'seg/mIoU': 100.0,
}


@pytest.fixture(scope='module')
def data_root(synthetic, tmp_path_factory):
    root = tmp_path_factory.mktemp('synthetic')
    synthetic.generate_cls(root, num_train=0, num_val=SIZES['cls'][0], img_size=32)
    synthetic.generate_det(root, num_train=0, num_val=SIZES['det'][0], img_size=64,
                           max_instances=3)
    synthetic.generate_seg(root, num_train=0, num_val=SIZES['seg'][0], img_size=64)
    return root


@pytest.fixture(scope='module')
def classes(synthetic) -> dict:
    """Task -> class names of the synthetic data."""
    return dict(cls=synthetic.CLS_CLASSES, det=synthetic.DET_CLASSES,
                seg=synthetic.SEG_CLASSES)


def dataloaders(root, classes) -> dict:
    datasets = dict(
        cls=dict(
            _scope_='mmpretrain',
            type='CustomDataset',
            data_root=str(root / 'cls'),
            ann_file='meta/val.txt',
            data_prefix='val',
            metainfo=dict(classes=classes['cls']),
            pipeline=[dict(type='LoadImageFromFile'),
                      dict(type='PackInputs')]),
        det=dict(
            _scope_='mmdet',
            type='CocoDataset',
            data_root=str(root / 'det'),
            ann_file='annotations/instances_val.json',
            data_prefix=dict(img='val/'),
            metainfo=dict(classes=classes['det']),
            test_mode=True,
            pipeline=[
                dict(type='LoadImageFromFile'),
                dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
                dict(type='PackDetInputs')
            ]),
        seg=dict(
            _scope_='mmseg',
            type='BaseSegDataset',
            data_root=str(root / 'seg'),
            data_prefix=dict(
                img_path='images/validation',
                seg_map_path='annotations/validation'),
            img_suffix='.jpg',
            seg_map_suffix='.png',
            reduce_zero_label=True,
            metainfo=dict(classes=classes['seg']),
            pipeline=[
                dict(type='LoadImageFromFile'),
                dict(type='LoadAnnotations'),
                dict(type='PackSegInputs')
            ]))
    return {
        task: dict(
            batch_size=SIZES[task][1],
            num_workers=0,
            sampler=dict(type='DefaultSampler', shuffle=False),
            collate_fn=dict(type='pseudo_collate'),
            dataset=dataset)
        for task, dataset in datasets.items()
    }


def evaluators(root) -> dict:
    return dict(
        cls=dict(_scope_='mmpretrain', type='Accuracy', topk=(1, 5)),
        det=dict(
            _scope_='mmdet',
            type='CocoMetric',
            ann_file=str(root / 'det/annotations/instances_val.json'),
            metric=['bbox', 'segm']),
        seg=dict(_scope_='mmseg', type='IoUMetric', iou_metrics=['mIoU']))


def predict_cls(sample, wrong, classes):
    label = (sample.gt_label + wrong) % len(classes)
    return sample.set_pred_score(
        torch.nn.functional.one_hot(label, len(classes))[0].float())


def predict_det(sample, wrong, classes):
    gt = sample.gt_instances
    sample.pred_instances = gt.new(
        bboxes=gt.bboxes.tensor,
        labels=gt.labels,
        scores=torch.ones(len(gt)),
        masks=gt.masks.to_tensor(torch.bool, 'cpu'))
    return sample


def predict_seg(sample, wrong, classes):
    sample.pred_sem_seg = sample.gt_sem_seg
    return sample


class GroundTruthModel(BaseModel):
    """Stand-in for the multi-task model: reads ``data['task']`` and predicts
    that task's ground truth; classification is off by one class until
    ``cls_correct_after`` training steps have run. ``classes``: task -> class
    names."""

    predict = dict(cls=predict_cls, det=predict_det, seg=predict_seg)

    def __init__(self, classes: dict, cls_correct_after: int = 0):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.classes = classes
        self.cls_correct_after = cls_correct_after
        self.train_steps = 0
        self.steps = []  # (task, autocast enabled) of each val/test step

    def forward(self, inputs, data_samples=None, mode='tensor'):
        self.train_steps += 1
        return dict(loss=self.weight.sum())

    def val_step(self, data):
        task = data['task']
        self.steps.append((task, torch.is_autocast_enabled('cpu')))
        wrong = int(self.train_steps < self.cls_correct_after)
        return [self.predict[task](s, wrong, self.classes[task])
                for s in data['data_samples']]

    test_step = val_step


class RecordHook(Hook):
    """Records the validation hooks' calls and what the runner shows them."""

    def __init__(self):
        self.events = []

    def before_val(self, runner):
        self.events.append('before_val')

    def before_val_epoch(self, runner):
        self.events.append('before_val_epoch')

    def before_val_iter(self, runner, batch_idx, data_batch=None):
        loop = runner.val_loop
        assert runner.val_evaluator is loop.evaluators[data_batch['task']]
        assert runner.val_dataloader is loop.dataloaders[data_batch['task']]
        self.events.append(
            (data_batch['task'], batch_idx, len(runner.val_dataloader)))

    def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        assert len(outputs) == len(data_batch['data_samples'])

    def after_val_epoch(self, runner, metrics=None):
        self.events.append(('after_val_epoch', metrics))

    def after_val(self, runner):
        self.events.append('after_val')


def build_runner(classes, work_dir, model=None, default_hooks=None, **cfg):
    return Runner(
        model=model or GroundTruthModel(classes),
        work_dir=str(work_dir),
        experiment_name=work_dir.name,
        default_scope='mod_squad',
        env_cfg=dict(dist_cfg=dict(backend='gloo')),
        default_hooks=dict(
            logger=dict(type='LoggerHook', interval=1), **default_hooks or {}),
        **cfg)


def val_cfg(root, classes, **loop):
    return dict(
        val_dataloader=dataloaders(root, classes),
        val_evaluator=evaluators(root),
        val_cfg=dict(type='mod_squad.MultiTaskValLoop', **loop))


def log_text(runner) -> str:
    return next(Path(runner.log_dir).glob('*.log')).read_text()


def test_val_runs_every_task_with_its_stock_evaluator(data_root, classes, tmp_path):
    hook = RecordHook()
    runner = build_runner(
        classes, tmp_path, custom_hooks=[hook], **val_cfg(data_root, classes))
    metrics = runner.val()

    assert isinstance(runner.val_loop, MultiTaskValLoop)
    assert {k: metrics[k] for k in PERFECT} == PERFECT
    assert {key.split('/')[0] for key in metrics} == {'cls', 'det', 'seg'}
    # the hooks: as mmengine's ValLoop calls them, with the task's dataloader
    # while it runs and all tasks' metrics at the end
    iters = [(task, i, -(-num // batch))
             for task, (num, batch) in SIZES.items()
             for i in range(-(-num // batch))]
    assert hook.events == [
        'before_val', 'before_val_epoch', *iters, ('after_val_epoch', metrics),
        'after_val'
    ]
    assert runner.model.steps == [(task, False) for task, *_ in iters]
    # LoggerHook: progress per task and the prefixed metrics
    log = log_text(runner)
    assert 'Evaluating task det (val): 4 samples, 2 batches' in log
    assert 'Epoch(val)[0][2/3]' in log and 'Epoch(val)[0][2/2]' in log
    assert 'cls/accuracy/top1: 100.0000' in log and 'seg/mIoU: 100.0000' in log
    assert runner.message_hub.get_scalar('val/det/coco/bbox_mAP').current() == 1


def test_empty_val_dataset_names_the_task_and_the_file(data_root, classes, tmp_path):
    coco = json.loads((data_root / 'det/annotations/instances_val.json').read_text())
    empty = tmp_path / 'no_images.json'
    empty.write_text(json.dumps(dict(coco, images=[], annotations=[])))
    cfg = val_cfg(data_root, classes)
    cfg['val_dataloader']['det']['dataset']['ann_file'] = str(empty)
    runner = build_runner(classes, tmp_path, **cfg)
    with pytest.raises(ValueError) as error:
        runner.val()
    assert str(error.value) == (
        f"HeterogeneousDataset: task 'det': CocoDataset found no samples in ann_file "
        f"'{empty}'; fix the annotations, or leave the task out of the dataset")


def test_tasks_option_evaluates_only_those_tasks_under_fp16(
        data_root, classes, tmp_path):
    runner = build_runner(
        classes, tmp_path,
        **val_cfg(data_root, classes, tasks=['seg'], fp16=True))
    metrics = runner.val()

    assert list(runner.val_loop.dataloaders) == ['seg']  # others not built
    assert metrics['seg/mIoU'] == 100
    assert all(key.startswith('seg/') for key in metrics)
    assert runner.model.steps == [('seg', True)]


def test_test_loop_logs_a_table_of_all_metrics(data_root, classes, tmp_path):
    runner = build_runner(
        classes,
        tmp_path,
        test_dataloader=dataloaders(data_root, classes),
        test_evaluator=evaluators(data_root),
        test_cfg=dict(type='mod_squad.MultiTaskTestLoop', tasks=['det',
                                                                 'cls']))
    metrics = runner.test()

    assert isinstance(runner.test_loop, MultiTaskTestLoop)
    assert list(metrics)[0].startswith('det/')
    assert metrics['cls/accuracy/top1'] == 100
    assert metrics['det/coco/segm_mAP'] == 1
    log = log_text(runner)
    assert '| task | metric' in log
    assert '| det  | coco/bbox_mAP ' in log and '| cls  | accuracy/top1' in log
    dumped = json.loads(next(Path(runner.log_dir).glob('*.json')).read_text())
    assert dumped['det/coco/bbox_mAP'] == 1


def test_save_best_selects_by_prefixed_metrics(data_root, classes, tmp_path):
    # cls is wrong after the first epoch and right after the second
    runner = build_runner(
        classes,
        tmp_path,
        model=GroundTruthModel(classes, cls_correct_after=2),
        train_dataloader=dict(
            dataset=[dict(inputs=torch.zeros(1))] * 2,
            sampler=dict(type='DefaultSampler', shuffle=False),
            batch_size=2),
        train_cfg=dict(by_epoch=True, max_epochs=2, val_interval=1),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.)),
        default_hooks=dict(
            checkpoint=dict(
                type='CheckpointHook',
                interval=10,
                save_best=['cls/accuracy/top1', 'det/coco/bbox_mAP'])),
        **val_cfg(data_root, classes))
    runner.train()

    assert (tmp_path / 'best_cls_accuracy_top1_epoch_2.pth').is_file()
    assert (tmp_path / 'best_det_coco_bbox_mAP_epoch_1.pth').is_file()
    assert not (tmp_path / 'best_cls_accuracy_top1_epoch_1.pth').exists()
    hub = runner.message_hub
    assert hub.get_info('best_score_cls/accuracy/top1') == 100
    assert hub.get_info('best_score_det/coco/bbox_mAP') == 1



@pytest.mark.parametrize('diff_rank_seed', [False, True])
def test_dataloaders_follow_the_configs_randomness(data_root, classes, tmp_path,
                                                   diff_rank_seed):
    randomness = dict(seed=7, diff_rank_seed=diff_rank_seed)
    runner = build_runner(classes, tmp_path, randomness=randomness,
                          cfg=dict(randomness=randomness),
                          **val_cfg(data_root, classes))
    # mmengine gives the samplers the run's seed, or, when ranks differ, none
    # (each sampler then draws its own)
    seeds = [loader.sampler.seed for loader in runner.val_loop.dataloaders.values()]
    assert [seed == 7 for seed in seeds] == [not diff_rank_seed] * 3

@pytest.mark.parametrize(
    'dataloader,evaluator,tasks,match',
    [
        (['cls', 'det'], ['cls', 'seg'], None,
         r"tasks \['det'\] have no evaluator and tasks \['seg'\] have no "
         'dataloader'),
        (['cls', 'det'], ['cls', 'det'], ['det', 'depth'],
         r"unknown tasks \['depth'\].*the tasks are \['cls', 'det'\]"),
        (['cls'], ['cls'], [], r'unknown tasks \[\] in tasks=\[\]'),
    ])
def test_task_mismatches_raise(dataloader, evaluator, tasks, match):
    with pytest.raises(ValueError, match=match):
        MultiTaskValLoop(
            runner=None,
            dataloader=dict.fromkeys(dataloader, {}),
            evaluator=dict.fromkeys(evaluator, {}),
            tasks=tasks)


@pytest.mark.parametrize('default_scope,loop_type', [
    ('mod_squad', 'MultiTaskTestLoop'),
    ('mmdet', 'mod_squad.MultiTaskTestLoop'),
])
def test_restrict_tasks_sets_the_multi_task_loops_tasks(
        default_scope, loop_type):
    cfg = Config(
        dict(default_scope=default_scope, test_cfg=dict(type=loop_type)))
    restrict_tasks(cfg, ['det'])
    assert cfg.test_cfg == dict(type=loop_type, tasks=['det'])


@pytest.mark.parametrize('test_cfg', [dict(), dict(type='TestLoop')])
def test_restrict_tasks_needs_a_multi_task_loop(test_cfg):
    with pytest.raises(ValueError, match='only a multi-task loop'):
        restrict_tasks(Config(dict(test_cfg=test_cfg)), ['det'])


def test_metrics_table_has_a_row_per_metric():
    table = metrics_table({'seg/mIoU': np.float32(7.95), 'det/coco/bbox_mAP': 0.5})
    assert '| seg  | mIoU          | 7.9500 |' in table
    assert '| det  | coco/bbox_mAP | 0.5000 |' in table


def test_metrics_table_shows_tasks_without_metrics():
    table = metrics_table({'cls/accuracy/top1': 11.5}, tasks=('cls', 'det'))
    assert '| det  | (no metrics)  | -       |' in table
    assert table.count('no metrics') == 1
