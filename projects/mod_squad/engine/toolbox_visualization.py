"""Each toolbox's stock visualization hook and visualizer, and the toolbox of each
task of a multi-task config: what ``tools/test.py --show-dir`` switches on and what
:class:`~mod_squad.apis.MultiTaskInferencer` draws with."""
from typing import Dict

from mmengine.config import Config

#: Per toolbox: its visualization hook (drawing every sample), its visualizer, and
#: the hook argument that names a directory for the painted images (None: the
#: hook writes through the visualizer's backends, under its ``save_dir``).
TOOLBOX_VISUALIZATION = {
    'mmpretrain': dict(
        hook=dict(type='VisualizationHook', enable=True, interval=1),
        visualizer=dict(type='UniversalVisualizer'),
        out_dir_arg='out_dir'),
    'mmdet': dict(
        hook=dict(type='DetVisualizationHook', draw=True, interval=1),
        visualizer=dict(type='DetLocalVisualizer'),
        out_dir_arg='test_out_dir'),
    'mmseg': dict(
        hook=dict(type='SegVisualizationHook', draw=True, interval=1),
        visualizer=dict(type='SegLocalVisualizer'),
        out_dir_arg=None),
}


def toolbox_settings(scope: str) -> dict:
    """The entry of :data:`TOOLBOX_VISUALIZATION` for ``scope``, or a ValueError."""
    if scope not in TOOLBOX_VISUALIZATION:
        raise ValueError(f'No stock visualization for scope {scope!r}; known: '
                         f'{sorted(TOOLBOX_VISUALIZATION)}.')
    return TOOLBOX_VISUALIZATION[scope]


def task_toolboxes(cfg: Config) -> Dict[str, str]:
    """Task -> toolbox scope (``'mmdet'``, ...) of each branch of a multi-task
    ``cfg.model``, read from the branch's ``_scope_``."""
    branches = cfg.model.get('branches')
    if not branches:
        raise ValueError(f'{cfg.model.get("type")} is not a multi-task model: '
                         'its config has no branches.')
    missing = [task for task, branch in branches.items() if '_scope_' not in branch]
    if missing:
        raise ValueError(f'Branches {missing} have no _scope_; set e.g. '
                         "_scope_='mmdet' on each branch.")
    return {task: branch['_scope_'] for task, branch in branches.items()}
