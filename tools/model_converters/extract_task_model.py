"""Extract tasks of a multi-task checkpoint into STOCK single-task models.

For each ``--task``: select the experts the task keeps per MoE layer from its usage
(the authors' criterion by default: share of top-k picks above ``THRESHOLD / k``, at
least k per layer, topped up by usage; or ``--keep-ratio`` / ``--keep``), print the
kept sets, and write to ``--out-dir``:

- ``{task}_extracted.py``: a config of the task's own toolbox (mmdet / mmseg /
  mmpretrain; ``default_scope``, ``custom_imports=['mod_squad']``) whose backbone is a
  smaller single-task ``mod_squad.ModSquadViT``, with the task's neck and heads, its
  val/test dataloader and evaluator;
- ``{task}_extracted.pth``: its weights (stock keys, ``meta.dataset_meta``; loadable
  with ``weights_only=True``);
- ``{task}_extracted_kept.json``: the kept experts and k of every layer.

Usage (``--usage``): ``auto`` (default) reads the checkpoint's running usage
(``expert_usage_running`` of ``ExpertUsageHook``, the authors' statistic: an EMA,
momentum 0.95, of the training forwards' share of picks) and, if the checkpoint has
none, runs the task's val split; ``running``, ``val``, ``test`` force one; a path
reads a ``usage.json`` of ``tools/analysis_tools/expert_usage.py`` (its cumulative
picks).

Example::

    python tools/model_converters/extract_task_model.py \\
        configs/mod_squad/mod-squad_vit-demo_2k_synthetic-cls-det-seg.py \\
        work_dirs/demo/iter_2000.pth --task det --out-dir work_dirs/demo/extract
    python tools/test.py work_dirs/demo/extract/det_extracted.py \\
        work_dirs/demo/extract/det_extracted.pth
"""
import argparse
import os.path as osp

import torch
from mmengine.config import DictAction
from mmengine.runner.checkpoint import CheckpointLoader
from terminaltables import AsciiTable

from mod_squad.analysis import build_model, count_parameters
from mod_squad.analysis.cli import add_selection_arguments, selection_from_args
from mod_squad.analysis.extraction import (USAGE_SOURCES, extract_task_model,
                                           load_usage, select_experts,
                                           task_dataset_meta, task_usage)
from mod_squad.engine.launch import read_config
from mod_squad.moe import usage_share


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Extract tasks of a multi-task checkpoint into stock models')
    parser.add_argument('config', help='multi-task config file path')
    parser.add_argument('checkpoint', help='multi-task checkpoint file')
    parser.add_argument('--task', nargs='+', required=True, help='tasks to extract')
    parser.add_argument('--out-dir', required=True, help='where to write the models')
    add_selection_arguments(parser)
    parser.add_argument('--usage', default='auto',
                        help=f'usage to select by: one of {USAGE_SOURCES} or a '
                        'usage.json (default: auto, see the module doc)')
    parser.add_argument('--max-batches', type=int,
                        help='batches per task when --usage runs a split')
    parser.add_argument('--top-k', type=int,
                        help='experts per token of the extracted MoE MLPs '
                        '(default: the task\'s k in the config)')
    parser.add_argument('--attn-top-k', type=int,
                        help='heads per token of the extracted MoAs (default: the '
                        'task\'s k in the config)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config, xxx=yyy format (e.g. '
        'model.backbone.inference_top_k.det=1)')
    return parser.parse_args(argv)


def kept_table(task: str, kept: dict, top_k: dict, usage: dict) -> str:
    """Per layer: E, k, the kept experts and their share of the usage."""
    rows = [['layer', 'E', 'k', 'kept', 'kept ids', 'usage kept']]
    for name, ids in kept.items():
        share = usage_share(usage[name])
        rows.append([name, usage[name].numel(), top_k[name], len(ids), str(ids),
                     f'{100 * float(share[ids].sum()):.1f}%'])
    return AsciiTable(rows, f' {task} ').table


def main(argv=None):
    args = parse_args(argv)
    cfg = read_config(args.config, args.cfg_options)
    selection = selection_from_args(args)
    top_k = dict(mlp=args.top_k, attn=args.attn_top_k)
    model = build_model(cfg, args.checkpoint)
    checkpoint = CheckpointLoader.load_checkpoint(args.checkpoint, map_location='cpu')
    source = load_usage(args.usage, model, cfg, checkpoint, args.task, args.max_batches)
    results = {}
    for task in args.task:
        usage = task_usage(source, model, task)
        kept = select_experts(model, task, usage, selection)
        extracted = extract_task_model(cfg, model, task, kept, top_k,
                                       dataset_meta=task_dataset_meta(cfg, task))
        print(kept_table(task, kept, extracted.top_k, usage))
        paths = extracted.save(
            args.out_dir,
            selection=str(selection),
            usage=args.usage,
            source=dict(config=osp.abspath(args.config),
                        checkpoint=osp.abspath(args.checkpoint)))
        joint = count_parameters(model, task)
        params = count_parameters(extracted.model, task)
        print(f'{task}: parameters {params.total:,} (joint model {joint.total:,}, '
              f'of which the task can use {joint.task:,}); wrote {paths["config"]}, '
              f'{paths["checkpoint"]}, {paths["kept"]}')
        results[task] = (extracted, paths)
    return results


if __name__ == '__main__':
    torch.set_grad_enabled(False)
    main()
