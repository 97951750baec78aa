"""Evaluate a checkpoint with an OpenMMLab config (mod_squad, mmdet, mmseg or mmpretrain)."""
import argparse

from mmengine.runner import Runner

from mod_squad.engine import restrict_tasks
from mod_squad.engine.launch import (add_runner_args, init_cpu_process_group,
                                     load_config)


def parse_args():
    parser = argparse.ArgumentParser(description='Test (and evaluate) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--task',
        nargs='+',
        help='evaluate only these tasks of a multi-task config (default: all)')
    add_runner_args(parser)
    return parser.parse_args()


def main():
    args = parse_args()
    cfg = load_config(args)
    if args.task is not None:
        restrict_tasks(cfg, args.task)
    cfg.load_from = args.checkpoint
    init_cpu_process_group(cfg)
    runner = Runner.from_cfg(cfg)
    runner.test()


if __name__ == '__main__':
    main()
