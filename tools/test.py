"""Evaluate a checkpoint with an OpenMMLab config (mod_squad, mmdet, mmseg or mmpretrain)."""
import argparse

from mmengine.model import is_model_wrapper
from mmengine.runner import Runner

from mod_squad.engine import restrict_tasks
from mod_squad.engine.launch import (add_runner_args, dump_predictions,
                                     init_cpu_process_group, load_config,
                                     show_predictions)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and evaluate) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', nargs='?', help='checkpoint file')
    parser.add_argument(
        '--untrained',
        action='store_true',
        help='evaluate the model as initialised for training (the config\'s seed and '
        'init_cfg), the baseline of a training run, instead of a checkpoint')
    parser.add_argument(
        '--task',
        nargs='+',
        help='evaluate only these tasks of a multi-task config (default: all)')
    parser.add_argument(
        '--out',
        help='dump predictions to this pickle file (a multi-task config: one file '
        'per task, <stem>_<task>.pkl); load only files you trust')
    parser.add_argument(
        '--show-dir',
        help='paint the predictions of every test image into this directory, '
        'one sub-directory per task')
    add_runner_args(parser)
    args = parser.parse_args(argv)
    if (args.checkpoint is None) != args.untrained:
        parser.error('give a checkpoint, or --untrained to evaluate the initialised model')
    return args


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args)
    if args.task is not None:
        restrict_tasks(cfg, args.task)
    cfg.load_from = args.checkpoint
    if args.out is not None:
        dump_predictions(cfg, args.out)
    if args.show_dir is not None:
        show_predictions(cfg, args.show_dir)
    init_cpu_process_group(cfg)
    runner = Runner.from_cfg(cfg)
    if args.untrained:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        model.init_weights()
    return runner.test()


if __name__ == '__main__':
    main()
