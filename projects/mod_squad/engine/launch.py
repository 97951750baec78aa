"""Command-line options shared by tools/train.py and tools/test.py."""
import argparse
import os
import os.path as osp
from typing import Optional

import torch
from mmengine.config import Config, DictAction

from .resumable_checkpoint import find_resumable_checkpoint


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


def load_config(args: argparse.Namespace) -> Config:
    """The config of ``args.config`` with the options of :func:`add_runner_args`
    applied: overrides, the work dir (default ``work_dirs/<config name>``) and the
    launcher. A distributed launch on a machine without CUDA uses the gloo backend
    (NCCL needs GPUs) and wraps the model in DDP without device ids (mmengine gives
    it the local rank, a GPU index); see also :func:`init_cpu_process_group`."""
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
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
