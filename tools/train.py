"""Train a model from an OpenMMLab config (mod_squad, mmdet, mmseg or mmpretrain)."""
import argparse

from mmengine.runner import Runner

from mod_squad.engine.launch import (add_runner_args, disable_validation,
                                     enable_auto_scale_lr, init_cpu_process_group,
                                     load_config, set_resume)


def parse_args(argv=None):
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
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='scale the learning rate by the batch size relative to the config\'s '
        'auto_scale_lr.base_batch_size (one task per iteration: the batch of '
        'auto_scale_lr.task)')
    parser.add_argument(
        '--no-validate', action='store_true', help='train without validation')
    add_runner_args(parser)
    return parser.parse_args(argv)


def build_runner(args) -> Runner:
    """The runner of ``args`` (parsed by :func:`parse_args`)."""
    cfg = load_config(args)
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.auto_scale_lr:
        enable_auto_scale_lr(cfg)
    if args.no_validate:
        disable_validation(cfg)
    set_resume(cfg, args.resume)
    init_cpu_process_group(cfg)
    return Runner.from_cfg(cfg)


def main(argv=None):
    build_runner(parse_args(argv)).train()


if __name__ == '__main__':
    main()
