"""Active FLOPs and parameters of a mod_squad model, per task.

The interface of mmdet's / mmseg's / mmpretrain's ``get_flops.py``, for a combined
multi-task config (``configs/mod_squad/*.py``; each task's branch, or ``--task``) or a
stock single-task config with a ModSquadViT backbone. The stock tools count
``scaled_dot_product_attention`` (dense and MoE attention) as 0 FLOPs and report the
total parameters only; this one reports, per task (see
:mod:`mod_squad.analysis.complexity`):

- FLOPs (active): one forward in tensor mode (no post-processing, no auxiliary
  head) on one random image of ``--shape`` after the task's data preprocessor;
  one multiply-add = one FLOP (mmengine's convention); and the FLOPs had every
  expert run on every token;
- params: of the model; of the task (shared parts, its routers and task embedding,
  its enabled experts, its branch); active per token (k of each layer's E experts).

Per-task k and enabled experts come from the config
(``--cfg-options model.backbone.inference_top_k.det=2``).

Example::

    python tools/analysis_tools/get_flops.py \\
        configs/mod_squad/mod-squad_vit-demo_2k_synthetic-cls-det-seg.py --task det
"""
import argparse

from mmengine.analysis.print_helper import _format_size, complexity_stats_table
from mmengine.config import Config, DictAction

from mod_squad.analysis import build_model, complexity


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Get the active FLOPs and parameters of a model, per task')
    parser.add_argument('config', help='config file path')
    parser.add_argument(
        '--task', nargs='+', help='tasks to analyse (default: every task)')
    parser.add_argument(
        '--shape',
        type=int,
        nargs='+',
        help='input image size, H W or one side (default: the ModSquadViT '
        'img_size, else 224)')
    parser.add_argument(
        '--show-table',
        action='store_true',
        help="print mmengine's per-module table of parameters and active FLOPs")
    parser.add_argument(
        '--max-depth', type=int, default=3, help='depth of the --show-table modules')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override some settings in the used config, the key-value pair '
        'in xxx=yyy format will be merged into config file')
    args = parser.parse_args(argv)
    if args.shape is not None and len(args.shape) not in (1, 2):
        parser.error(f'--shape takes H W or one side, got {args.shape}')
    return args


def main(argv=None):
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    model = complexity.drop_auxiliary_heads(build_model(cfg))
    shape = complexity.default_shape(model) if args.shape is None else (
        args.shape * 2)[:2]
    results = []
    split_line = '=' * 30
    for task in args.task or complexity.model_tasks(model):
        result = complexity.analyze_dummy_image(model, task, shape)
        results.append(result)
        if args.show_table:
            print(complexity_stats_table(result.analyzer, max_depth=args.max_depth))
        pad_shape = tuple(result.input_shape[-2:])
        if pad_shape != tuple(shape):
            print(f'{split_line}\nUse size divisor set input shape '
                  f'from {tuple(shape)} to {pad_shape}')
        print(f'{split_line}\nTask: {task}\n'
              'Compute type: direct: randomly generate a picture\n'
              f'Input shape: {pad_shape}\n'
              f'Flops: {_format_size(result.flops)} active, '
              f'{_format_size(result.all_experts_flops)} if every expert ran\n'
              f'Params: {_format_size(result.params.total)} model, '
              f'{_format_size(result.params.task)} task, '
              f'{_format_size(result.params.active)} active per token\n'
              f'{split_line}')
    print(complexity.complexity_table(results))
    print('!!!Please be cautious if you use the results in papers. '
          'You may need to check if all ops are supported and verify that the '
          'flops computation is correct.')
    return results


if __name__ == '__main__':
    main()
