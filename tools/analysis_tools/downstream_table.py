"""The downstream table (README, "Downstream: which part to fine-tune"): the
fine-tuning runs of ``tools/analysis_tools/run_downstream.sh`` in one table.

Reads ``WORK_DIR/seed<S>/<mode>/`` (see :mod:`mod_squad.analysis.downstream`) and
writes ``downstream.md`` and ``downstream.json`` to ``--out-dir`` (default
WORK_DIR): per mode, trainable and total parameters, the parameters and active FLOPs
of the model deployed for the new task, seconds per training iteration, the metric
per seed, its mean and spread (max - min).

Example::

    python tools/analysis_tools/downstream_table.py work_dirs/downstream \\
        --modes full routers top-experts continual adapter extracted
"""
import argparse
import json
import os
import os.path as osp

import torch

from mod_squad.analysis.downstream import collect, table_markdown


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Table of downstream fine-tuning runs')
    parser.add_argument('work_dir', help='holds seed<S>/<mode>/ work directories')
    parser.add_argument('--modes', nargs='+',
                        help='rows, in this order (default: every mode, sorted)')
    parser.add_argument('--metric', default='accuracy/top1',
                        help='metric of the last validation (default: accuracy/top1)')
    parser.add_argument('--out-dir', help='where to write (default: work_dir)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    rows = collect(args.work_dir, args.modes, args.metric)
    table = table_markdown(rows)
    out_dir = args.out_dir or args.work_dir
    os.makedirs(out_dir, exist_ok=True)
    with open(osp.join(out_dir, 'downstream.md'), 'w') as f:
        f.write(table + '\n')
    with open(osp.join(out_dir, 'downstream.json'), 'w') as f:
        json.dump(rows, f, indent=1)
    print(table)
    return rows


if __name__ == '__main__':
    torch.set_grad_enabled(False)
    main()
