"""tools/analysis_tools/benchmark_moe.py runs its cases at toy sizes."""
import importlib.util
import os.path as osp
import subprocess
import sys

import torch

SCRIPT = osp.join(
    osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'tools',
    'analysis_tools', 'benchmark_moe.py')
TOY = ['--embed-dims', '16', '--num-experts', '4', '--top-k', '2', '--expert-hidden',
       '8', '--batch', '2', '--seq-len', '5']


def _load_script():
    spec = importlib.util.spec_from_file_location('benchmark_moe', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_steps_train_and_memory_is_measured():
    bench = _load_script()
    args = bench.parse_args(TOY)
    step = bench.CASES['moe_mlp'].build(args, torch.device('cpu'))
    step()
    assert bench.peak_memory_mib(step, torch.device('cpu')) >= 0
    assert bench.import_timing().saved_activations_mib(step) > 0
    times = bench.time_cases({'moe_mlp': step}, bench.parse_args(TOY + ['--rounds', '2']),
                             torch.device('cpu'))
    assert times['moe_mlp'] > 0


def test_script_prints_a_table_with_ratios():
    out = subprocess.run(
        [sys.executable, SCRIPT, *TOY, '--rounds', '1', '--iters', '1', '--warmup', '0',
         '--no-memory', '--num-heads', '2', '--attn-experts', '4', '--attn-top-k', '2',
         '--cases', 'dense_mlp', 'moe_mlp', 'dense_attention', 'moa'],
        capture_output=True, text=True, check=True).stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line}
    assert rows['dense_mlp'][2] == '-'
    for name, baseline in (('moe_mlp', 'dense_mlp'), ('moa', 'dense_attention')):
        assert rows[name][3] == baseline
        assert float(rows[name][1]) > 0 and float(rows[name][2]) > 0
