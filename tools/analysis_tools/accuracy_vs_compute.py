"""Accuracy vs active compute of a multi-task checkpoint, per task, no retraining.

Evaluates each task (``--task``, default all) with its stock evaluator on its val
(or ``--split test``) dataloader at these settings: the config's own (``full``);
each ``--top-k`` (experts per token of the MoE MLPs) and ``--attn-top-k`` (heads
per token of the MoAs), the other kind at its k; each ``--keep-ratio`` and
``--threshold`` (the experts kept by :class:`mod_squad.moe.ExpertSelection` from the
usage of ``--usage``, as ``tools/model_converters/extract_task_model.py`` keeps them;
the others disabled). Writes to ``--out-dir``: ``results.json``, ``results.md`` (a
markdown table: k and experts per layer, parameters, active GFLOPs, ms per image,
metric) and ``accuracy_vs_compute.png`` (metric vs active GFLOPs, a panel per task).

Example::

    python tools/analysis_tools/accuracy_vs_compute.py \\
        configs/mod_squad/mod-squad_vit-demo_2k_synthetic-cls-det-seg.py \\
        work_dirs/demo/iter_2000.pth --top-k 1 --attn-top-k 1 2 \\
        --keep-ratio 0.5 --out-dir work_dirs/demo/compute
"""
import argparse
import os
import os.path as osp

import torch
from mmengine.config import DictAction
from mmengine.runner.checkpoint import CheckpointLoader

from mod_squad.analysis import build_model
from mod_squad.analysis.accuracy_vs_compute import (ComputeSetting, evaluate_setting,
                                                    plot_accuracy_vs_compute,
                                                    results_table, save_results)
from mod_squad.analysis.expert_usage import build_task_dataloaders
from mod_squad.analysis.extraction import (USAGE_SOURCES, load_usage, select_experts,
                                           task_usage)
from mod_squad.engine.launch import read_config
from mod_squad.moe import ExpertSelection


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Metric vs active compute of each task at several settings')
    parser.add_argument('config', help='multi-task config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--task', nargs='+', help='tasks (default: all)')
    parser.add_argument('--split', choices=['val', 'test'], default='val')
    parser.add_argument('--top-k', type=int, nargs='+', default=[],
                        help='experts per token of the MoE MLPs to evaluate')
    parser.add_argument('--attn-top-k', type=int, nargs='+', default=[],
                        help='heads per token of the MoAs to evaluate')
    parser.add_argument('--keep-ratio', type=float, nargs='+', default=[],
                        help='kept-expert settings: this ratio of each layer')
    parser.add_argument('--threshold', type=float, nargs='+', default=[],
                        help='kept-expert settings: the authors\' criterion')
    parser.add_argument('--usage', default='auto',
                        help=f'usage the kept experts are selected by: one of '
                        f'{USAGE_SOURCES} or a usage.json (auto: the checkpoint\'s '
                        'running usage, else the val split)')
    parser.add_argument('--max-batches', type=int, help='batches per evaluation')
    parser.add_argument('--out-dir', default='.', help='where to write the results')
    parser.add_argument('--device',
                        default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the config, xxx=yyy format')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = read_config(args.config, args.cfg_options)
    model = build_model(cfg, args.checkpoint, args.device)
    dataloaders = build_task_dataloaders(cfg, args.split, args.task)
    tasks = list(dataloaders)
    selections = [ExpertSelection(keep_ratio=r) for r in args.keep_ratio] + [
        ExpertSelection(threshold=t) for t in args.threshold]
    usage = None
    if selections:
        checkpoint = CheckpointLoader.load_checkpoint(args.checkpoint, map_location='cpu')
        usage = load_usage(args.usage, model, cfg, checkpoint, tasks, args.max_batches)
    results = []
    for task in tasks:
        settings = [ComputeSetting('full')]
        settings += [ComputeSetting(f'mlp k={k}', dict(mlp=k)) for k in args.top_k]
        settings += [ComputeSetting(f'attn k={k}', dict(attn=k)) for k in args.attn_top_k]
        settings += [
            ComputeSetting(f'kept: {s}'.split(' (')[0],
                           kept=select_experts(model, task,
                                               task_usage(usage, model, task), s))
            for s in selections]
        for setting in settings:
            print(f'\n{task}: {setting.name}')
            result = evaluate_setting(model, task, setting, dataloaders[task],
                                      cfg[f'{args.split}_evaluator'][task],
                                      args.max_batches)
            print(f'{task} {setting.name}: {result.metric} {result.value:.4g}, '
                  f'{result.gflops:.4f} active GFLOPs, '
                  f'{result.ms_per_image:.2f} ms/image')
            results.append(result)
    table = results_table(results)
    print('\n' + table)
    os.makedirs(args.out_dir, exist_ok=True)
    save_results(results, osp.join(args.out_dir, 'results.json'))
    with open(osp.join(args.out_dir, 'results.md'), 'w') as f:
        f.write(table + '\n')
    plot_accuracy_vs_compute(results, osp.join(args.out_dir, 'accuracy_vs_compute.png'))
    print(f'Wrote results.json, results.md and accuracy_vs_compute.png to {args.out_dir}')
    return results


if __name__ == '__main__':
    main()
