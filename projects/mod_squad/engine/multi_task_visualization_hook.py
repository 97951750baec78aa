"""Each task's stock visualization hook on that task's validation and test batches."""
import os.path as osp
from typing import Dict

from mmengine.hooks import Hook

from mod_squad.models.multi_task_data_preprocessor import task_of_batch
from mod_squad.registry import HOOKS, VISUALIZERS


@HOOKS.register_module()
class MultiTaskVisualizationHook(Hook):
    """Route validation/test batches to the stock visualization hook of their task
    (mmdet ``DetVisualizationHook``, mmseg ``SegVisualizationHook``, mmpretrain
    ``VisualizationHook``), each drawing with its own toolbox visualizer::

        custom_hooks = [dict(
            type='mod_squad.MultiTaskVisualizationHook',
            hooks=dict(
                det=dict(_scope_='mmdet', type='DetVisualizationHook', draw=True),
                seg=dict(_scope_='mmseg', type='SegVisualizationHook', draw=True)),
            visualizers=dict(
                det=dict(_scope_='mmdet', type='DetLocalVisualizer',
                         vis_backends=[dict(type='LocalVisBackend')]),
                seg=dict(_scope_='mmseg', type='SegLocalVisualizer',
                         vis_backends=[dict(type='LocalVisBackend')])))]

    A task's images go to ``<log dir>/<task>/``; its visualizer gets the class names
    of the task's dataset before drawing.

    Args:
        hooks (dict[str, dict]): Task -> stock visualization hook config.
        visualizers (dict[str, dict]): Task -> stock visualizer config.
    """
    priority = 'NORMAL'

    def __init__(self, hooks: Dict[str, dict], visualizers: Dict[str, dict]):
        if set(hooks) != set(visualizers):
            raise ValueError(f'Tasks with a hook {sorted(hooks)} and tasks with a '
                             f'visualizer {sorted(visualizers)} differ.')
        self.hook_cfgs = hooks
        self.visualizer_cfgs = visualizers
        self.hooks: Dict[str, Hook] = {}

    def before_run(self, runner) -> None:
        for task, hook_cfg in self.hook_cfgs.items():
            visualizer = dict(self.visualizer_cfgs[task])
            visualizer.setdefault('name', f'{runner.experiment_name}_{task}_visualizer')
            visualizer.setdefault('save_dir', osp.join(runner.log_dir, task))
            VISUALIZERS.build(visualizer)  # the current instance, which the hook takes
            self.hooks[task] = HOOKS.build(hook_cfg)

    def _route(self, stage: str, runner, batch_idx: int, data_batch: dict,
               outputs) -> None:
        hook = self.hooks.get(task_of_batch(data_batch))
        if hook is None:
            return
        loop = getattr(runner, f'{stage}_loop')
        hook._visualizer.dataset_meta = loop.dataloader.dataset.metainfo
        getattr(hook, f'after_{stage}_iter')(runner, batch_idx, data_batch, outputs)

    def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self._route('val', runner, batch_idx, data_batch, outputs)

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self._route('test', runner, batch_idx, data_batch, outputs)
