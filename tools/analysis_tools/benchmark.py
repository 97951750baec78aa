"""ModSquadViT models beside the stock mmpretrain / mmdet / mmseg models, in one process.

For each comparison of the benchmark config (default
``configs/mod_squad/benchmark/vit-b_vs_stock.py``: cls, mask-rcnn, retinanet, seg,
joint): inference latency (one image) and throughput, training-step time (forward,
backward, AdamW step), peak memory, parameters (total / active) and FLOPs (all experts
/ active), timed interleaved (warm-up, median of rounds) with ratios to the
comparison's first model; see :mod:`mod_squad.analysis.benchmark`. Writes
``benchmark.md`` (a markdown table) and ``benchmark.json`` to ``--work-dir``.

Example (CPU, smaller images, one thread)::

    python tools/analysis_tools/benchmark.py --comparisons cls seg --small --threads 1
"""
import argparse
import os
import os.path as osp

import torch
from mmengine.config import Config, DictAction

from mod_squad.analysis.benchmark import (SMALL_SIZES, STANDARD_SIZES,
                                          BenchmarkSettings, dump_report,
                                          load_comparisons, markdown_table,
                                          run_benchmark, summary)

DEFAULT_CONFIG = 'configs/mod_squad/benchmark/vit-b_vs_stock.py'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Benchmark ModSquadViT models against stock OpenMMLab models')
    parser.add_argument('config', nargs='?', default=DEFAULT_CONFIG,
                        help='benchmark config (its `comparisons`)')
    parser.add_argument('--comparisons', nargs='+',
                        help='comparisons to run (default: all of the config)')
    parser.add_argument('--small', action='store_true',
                        help='smaller images for CPU: ' + ', '.join(
                            f'{k} {h}x{w}' for k, (h, w) in SMALL_SIZES.items())
                        + ' (default: ' + ', '.join(
                            f'{k} {h}x{w}' for k, (h, w) in STANDARD_SIZES.items())
                        + ')')
    parser.add_argument('--sizes', nargs='+', action=DictAction, default={},
                        help='image size per kind of task, e.g. cls=224,224 '
                        'det=800,1333 (over the standard or --small ones)')
    parser.add_argument('--batch-size', type=int, default=2,
                        help='images per task of a throughput or train step')
    parser.add_argument('--num-warmup', type=int, default=2,
                        help='runs of every step before timing')
    parser.add_argument('--rounds', type=int, default=5,
                        help='interleaved rounds (median)')
    parser.add_argument('--iters', type=int, default=1, help='runs per step and round')
    parser.add_argument(
        '--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--amp', action='store_true',
                        help='bf16 autocast of the training steps')
    parser.add_argument('--threads', type=int, help='torch CPU threads')
    parser.add_argument('--no-memory', action='store_true', help='skip peak memory')
    parser.add_argument('--no-flops', action='store_true', help='skip FLOP counting')
    parser.add_argument('--work-dir', default='work_dirs/benchmark',
                        help='where benchmark.md and benchmark.json go')
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = BenchmarkSettings(
        sizes=dict(SMALL_SIZES if args.small else STANDARD_SIZES, **args.sizes),
        batch_size=args.batch_size, warmup=args.num_warmup, rounds=args.rounds,
        iters=args.iters, device=args.device, amp=args.amp,
        memory=not args.no_memory, flops=not args.no_flops)
    comparisons = load_comparisons(Config.fromfile(args.config), args.comparisons)
    report = run_benchmark(comparisons, settings)
    table = summary(report) + '\n\n' + markdown_table(report) + '\n'
    os.makedirs(args.work_dir, exist_ok=True)
    with open(osp.join(args.work_dir, 'benchmark.md'), 'w') as f:
        f.write(table)
    dump_report(report, osp.join(args.work_dir, 'benchmark.json'))
    print(table)
    print(f'Wrote benchmark.md and benchmark.json to {args.work_dir}')
    return report


if __name__ == '__main__':
    main()
