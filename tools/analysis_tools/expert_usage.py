"""Expert usage of a multi-task checkpoint on each task's val (or test) data.

Runs each task's dataloader through the model (evaluation mode, no grad, no metric)
and writes to ``--out-dir``:

- ``usage.json``: per layer (name, kind MoA/MLP, E, each task's k) and task, the
  top-k picks (``counts``, ``pick_share``), router probability mass (``prob_mass``,
  ``mass_share``) and tokens of every expert, plus the printed summary (``summary``);
- ``usage.png``: heatmaps of the share of picks (``--stat``), the kept experts
  outlined;

and prints per task and layer the experts covering 90% of the routing mass, the
entropy of the share of picks and the experts kept under the selection
(``--threshold``, ``--keep-ratio``, ``--keep``; default: the authors' threshold 3),
and the Jaccard overlap of the tasks' kept sets. The numbers are the layers'
cumulative usage statistics over the run (not the running share of training).

Example::

    python tools/analysis_tools/expert_usage.py \\
        configs/mod_squad/mod-squad_vit-demo_2k_synthetic-cls-det-seg.py \\
        work_dirs/demo/iter_2000.pth --out-dir work_dirs/demo/usage
"""
import argparse
import os
import os.path as osp

import torch
from mmengine.config import DictAction

from mod_squad.analysis import build_model
from mod_squad.analysis.cli import add_selection_arguments, selection_from_args
from mod_squad.analysis.expert_usage import (build_task_dataloaders,
                                             collect_usage, format_summary,
                                             plot_usage, summarize)
from mod_squad.engine.launch import read_config


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Expert usage of a multi-task checkpoint, per task and layer')
    parser.add_argument('config', help='multi-task config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--task', nargs='+', help='tasks to run (default: all)')
    parser.add_argument('--split', choices=['val', 'test'], default='val',
                        help='the dataloaders to run: val_dataloader or test_dataloader')
    parser.add_argument('--out-dir', default='.', help='where to write usage.json/.png')
    parser.add_argument('--max-batches', type=int,
                        help='batches per task (default: the whole split)')
    parser.add_argument('--stat', choices=['counts', 'prob_mass'], default='counts',
                        help='what the heatmap shows: share of top-k picks (counts) or '
                        'of routing mass (prob_mass)')
    add_selection_arguments(parser)
    parser.add_argument('--device',
                        default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='device to run the model on (default: cuda if available)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config, xxx=yyy format')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = read_config(args.config, args.cfg_options)
    selection = selection_from_args(args)
    model = build_model(cfg, args.checkpoint, args.device)
    dataloaders = build_task_dataloaders(cfg, args.split, args.task)
    source = (f'{args.split} split of {osp.basename(args.config)}, '
              f'{osp.basename(args.checkpoint)}')
    report = collect_usage(model, dataloaders, args.max_batches, source)
    summary = summarize(report, selection)
    print(format_summary(report, summary))
    os.makedirs(args.out_dir, exist_ok=True)
    report.save(osp.join(args.out_dir, 'usage.json'), summary=summary)
    plot_usage(report, osp.join(args.out_dir, 'usage.png'), args.stat,
               report.kept_experts(selection))
    print(f'Wrote usage.json and usage.png to {args.out_dir}')
    return report, summary


if __name__ == '__main__':
    main()
