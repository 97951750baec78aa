"""tools/analysis_tools/benchmark_moe.py: the backbone cases at toy sizes."""
import os.path as osp
import subprocess
import sys

SCRIPT = osp.join('tools', 'analysis_tools', 'benchmark_moe.py')


def test_backbone_cases_report_a_ratio_against_dense_vit():
    out = subprocess.run(
        [sys.executable, SCRIPT, '--embed-dims', '16', '--num-heads', '2',
         '--num-layers', '2', '--num-experts', '4', '--top-k', '2',
         '--expert-hidden', '8', '--attn-experts', '4', '--attn-top-k', '2',
         '--batch', '1', '--seq-len', '5', '--rounds', '1', '--iters', '1',
         '--warmup', '0', '--no-memory', '--cases', 'dense_vit', 'mod_squad_vit'],
        capture_output=True, text=True, check=True).stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line}
    assert rows['mod_squad_vit'][3] == 'dense_vit'
    assert float(rows['mod_squad_vit'][2]) > 0
