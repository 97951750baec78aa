"""Command-line options of tools/train.py and tools/test.py, applied to a config."""
import argparse
import os
import os.path as osp
from typing import Optional

import torch
from mmengine.config import Config, DictAction

from .resumable_checkpoint import find_resumable_checkpoint
from .toolbox_visualization import task_toolboxes, toolbox_settings


def add_runner_args(parser: argparse.ArgumentParser) -> None:
    """``--work-dir``, ``--cfg-options``, ``--launcher`` and ``--local-rank``."""
    parser.add_argument('--work-dir', help='the dir to save logs, models and metrics')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config, xxx=yyy format')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def read_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    """The config at ``path`` with ``--cfg-options`` merged in."""
    cfg = Config.fromfile(path)
    if cfg_options is not None:
        cfg.merge_from_dict(cfg_options)
    return cfg


def load_config(args: argparse.Namespace) -> Config:
    """The config of ``args.config`` with the options of :func:`add_runner_args`
    applied: overrides, the work dir (default ``work_dirs/<config name>``) and the
    launcher. A distributed launch on a machine without CUDA uses the gloo backend
    (NCCL needs GPUs) and wraps the model in DDP without device ids (mmengine gives
    it the local rank, a GPU index); see also :func:`init_cpu_process_group`."""
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    cfg = read_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    if cfg.launcher != 'none' and not torch.cuda.is_available():
        cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = 'gloo'
        wrapper = cfg.get('model_wrapper_cfg') or dict(type='MMDistributedDataParallel')
        wrapper['device_ids'] = None
        cfg.model_wrapper_cfg = wrapper
    return cfg


def set_resume(cfg: Config, resume: Optional[str]) -> None:
    """Apply ``tools/train.py --resume [PATH]`` to ``cfg``.

    ``resume`` is ``None`` (no option), a checkpoint path, or ``'auto'`` (the option
    without a path): resume from the checkpoint that
    :func:`~mod_squad.engine.find_resumable_checkpoint` finds in the work dir, which
    falls back from a broken ``last_checkpoint`` to the newest complete checkpoint,
    or start a new run when there is none.
    """
    if resume is None:
        return
    cfg.load_from = (find_resumable_checkpoint(cfg.work_dir)
                     if resume == 'auto' else resume)
    cfg.resume = cfg.load_from is not None


def init_cpu_process_group(cfg: Config) -> None:
    """Start the gloo process group of a ``--launcher pytorch`` run without CUDA.

    mmengine's launcher calls ``torch.cuda.set_device`` first, which fails without a
    GPU; the Runner skips its own initialisation when a group already exists.
    """
    if (cfg.launcher == 'pytorch' and not torch.cuda.is_available()
            and not torch.distributed.is_initialized()):
        torch.distributed.init_process_group(backend='gloo')


def _out_file(out: str, task: Optional[str]) -> str:
    if not out.endswith(('.pkl', '.pickle')):
        raise ValueError(f'--out {out!r}: the dump file must be a .pkl or .pickle file.')
    root, ext = osp.splitext(out)
    return out if task is None else f'{root}_{task}{ext}'


def dump_predictions(cfg: Config, out: str) -> None:
    """``tools/test.py --out``: add to each test evaluator the dump metric of its
    toolbox (mmdet's ``DumpDetResults``, which RLE-encodes masks, else mmengine's
    ``DumpResults``), as mmdet's test tool does. A multi-task config dumps each
    task's predictions to ``<out stem>_<task>.pkl``, a single-task one to ``out``.
    The files are pickles (of dicts of tensors and arrays): load them with
    ``mmengine.load``, and only files you trust, since unpickling runs code."""
    def with_dump(evaluator, scope, out_file):
        metrics = list(evaluator) if isinstance(evaluator, (list, tuple)) else [evaluator]
        dump = (dict(_scope_='mmdet', type='DumpDetResults') if scope == 'mmdet'
                else dict(_scope_='mmengine', type='DumpResults'))
        return metrics + [dict(dump, out_file_path=out_file)]

    if cfg.model.get('branches'):
        toolboxes = task_toolboxes(cfg)
        cfg.test_evaluator = {
            task: with_dump(evaluator, toolboxes[task], _out_file(out, task))
            for task, evaluator in cfg.test_evaluator.items()}
    else:
        cfg.test_evaluator = with_dump(cfg.test_evaluator, cfg.get('default_scope'),
                                       _out_file(out, None))


def show_predictions(cfg: Config, show_dir: str) -> None:
    """``tools/test.py --show-dir``: every test image painted with its
    predictions, by its toolbox's stock visualization hook, into
    ``show_dir/<task>/`` (mmseg's hook writes through its visualizer, under
    ``show_dir/<task>/vis_data/vis_image/``). Unlike mmdet's tool, which writes
    under ``work_dir/<timestamp>/show_dir``, the directory is taken as given
    (as mmseg's and mmpretrain's tools do).

    A multi-task config gets a ``MultiTaskVisualizationHook`` (or its own one is
    switched on), a single-task config its ``default_hooks.visualization``."""
    show_dir = osp.abspath(show_dir)

    def switch_on(hook: dict, visualizer: dict, scope: str, out_dir: str):
        settings = toolbox_settings(scope)
        on = {k: v for k, v in settings['hook'].items() if k in ('draw', 'enable')}
        hook.update(on)
        if settings['out_dir_arg'] is None:
            visualizer.update(save_dir=out_dir,
                              vis_backends=[dict(type='LocalVisBackend')])
        else:
            hook[settings['out_dir_arg']] = out_dir

    if not cfg.model.get('branches'):
        scope = cfg.get('default_scope')
        if 'visualization' not in cfg.get('default_hooks', {}):
            raise RuntimeError('--show-dir needs default_hooks.visualization '
                               f'(e.g. {toolbox_settings(scope)["hook"]}).')
        switch_on(cfg.default_hooks.visualization, cfg.visualizer, scope, show_dir)
        return
    custom_hooks = list(cfg.get('custom_hooks', []))
    hooks = [h for h in custom_hooks
             if h['type'].split('.')[-1] == 'MultiTaskVisualizationHook']
    if not hooks:
        hooks = [dict(type='mod_squad.MultiTaskVisualizationHook', hooks={},
                      visualizers={})]
        custom_hooks += hooks
    hook = hooks[0]
    for task, scope in task_toolboxes(cfg).items():
        settings = toolbox_settings(scope)
        hook['hooks'].setdefault(task, dict(settings['hook'], _scope_=scope))
        hook['visualizers'].setdefault(task, dict(settings['visualizer'], _scope_=scope))
        switch_on(hook['hooks'][task], hook['visualizers'][task], scope,
                  osp.join(show_dir, task))
    cfg.custom_hooks = custom_hooks


def enable_auto_scale_lr(cfg: Config) -> None:
    """``tools/train.py --auto-scale-lr``: mmengine's linear LR scaling by the
    ratio of the batch size to ``auto_scale_lr.base_batch_size`` of the config.

    With one task per iteration (``TaskBatchSampler``'s ``batch_sizes``) the
    batch size is that of ``auto_scale_lr.task``'s iterations over all ranks,
    e.g. ``dict(base_batch_size=512, task='cls')`` for 8 GPUs x 64 cls images:
    every task's batch grows with the number of GPUs alike, so each task gives
    the same ratio when only the GPU count changes."""
    scale = cfg.get('auto_scale_lr')
    if not scale or 'base_batch_size' not in scale:
        raise RuntimeError('--auto-scale-lr needs auto_scale_lr = '
                           'dict(base_batch_size=...) in the config.')
    scale.enable = True
    loader = cfg.train_dataloader
    batch_sizes = (loader.get('batch_sampler') or {}).get('batch_sizes')
    if batch_sizes is None:
        return
    task = scale.get('task')
    if task not in batch_sizes:
        raise RuntimeError(
            f'auto_scale_lr.task={task!r}: with one task per iteration, name the '
            f'task whose batch base_batch_size counts, one of {sorted(batch_sizes)}.')
    # mmengine reads the dataloader's batch_size, which is also the sampler's
    # default for tasks missing from batch_sizes: write that default out first.
    default = loader.get('batch_size')
    if default is not None:
        for other in loader.dataset.datasets:
            batch_sizes.setdefault(other, default)
    missing = [t for t in loader.dataset.datasets if t not in batch_sizes]
    if missing:
        raise RuntimeError(f'train_dataloader.batch_sampler.batch_sizes has no '
                           f'batch size for tasks {missing}.')
    loader.batch_size = batch_sizes[task]


def disable_validation(cfg: Config) -> None:
    """``tools/train.py --no-validate``: no validation loop, and no best
    checkpoint (it needs validation metrics)."""
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    checkpoint = cfg.get('default_hooks', {}).get('checkpoint')
    if checkpoint is not None:
        checkpoint.pop('save_best', None)
