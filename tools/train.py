"""Train a model from an OpenMMLab config (mod_squad, mmdet, mmseg or mmpretrain)."""
import argparse

from mmengine.runner import Runner

from mod_squad.engine.launch import (add_runner_args, init_cpu_process_group,
                                     load_config, set_resume)


def parse_args():
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from the given checkpoint, or, when no path is given, from '
        'the one named by last_checkpoint in the work dir (the newest complete '
        'checkpoint there if that one is missing or partly written)')
    parser.add_argument(
        '--amp', action='store_true', help='enable automatic mixed precision')
    add_runner_args(parser)
    return parser.parse_args()


def main():
    args = parse_args()
    cfg = load_config(args)
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    set_resume(cfg, args.resume)
    init_cpu_process_group(cfg)
    runner = Runner.from_cfg(cfg)
    runner.train()


if __name__ == '__main__':
    main()
