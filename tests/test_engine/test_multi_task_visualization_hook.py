"""MultiTaskVisualizationHook: each task's stock hook draws that task's batches."""
import glob
import os.path as osp

import pytest
from mmengine.runner import Runner

from mod_squad.engine import MultiTaskVisualizationHook


def backend():
    return [dict(type='LocalVisBackend')]


def test_each_task_drawn_by_its_toolbox(demo_cfg, tmp_path):
    demo_cfg.work_dir = str(tmp_path)
    demo_cfg.test_dataloader = {
        task: dict(loader, num_workers=0, persistent_workers=False)
        for task, loader in demo_cfg.test_dataloader.items()
    }
    demo_cfg.custom_hooks = [
        dict(
            type='MultiTaskVisualizationHook',
            hooks=dict(
                cls=dict(_scope_='mmpretrain', type='VisualizationHook', enable=True,
                         interval=1),
                det=dict(_scope_='mmdet', type='DetVisualizationHook', draw=True,
                         interval=1, score_thr=0.),
                seg=dict(_scope_='mmseg', type='SegVisualizationHook', draw=True,
                         interval=1)),
            visualizers=dict(
                cls=dict(_scope_='mmpretrain', type='UniversalVisualizer',
                         vis_backends=backend()),
                det=dict(_scope_='mmdet', type='DetLocalVisualizer',
                         vis_backends=backend()),
                seg=dict(_scope_='mmseg', type='SegLocalVisualizer',
                         vis_backends=backend())))
    ]
    runner = Runner.from_cfg(demo_cfg)
    runner.test()
    for task, loader in demo_cfg.test_dataloader.items():
        images = glob.glob(osp.join(runner.log_dir, task, '**', '*.png'), recursive=True)
        assert len(images) == len(runner.test_loop.dataloaders[task].dataset), task
    hooks = next(h for h in runner.hooks
                 if isinstance(h, MultiTaskVisualizationHook)).hooks
    assert hooks['cls']._visualizer.dataset_meta['classes'][0] == 'arrow'
    assert hooks['det']._visualizer.dataset_meta['classes'][0] == 'circle'
    assert hooks['seg']._visualizer.dataset_meta['classes'][0] == 'plain'


def test_tasks_of_hooks_and_visualizers_must_match():
    with pytest.raises(ValueError, match='differ'):
        MultiTaskVisualizationHook(hooks=dict(det={}), visualizers=dict(seg={}))
