"""mod_squad.moe is plain PyTorch: it imports and runs where OpenMMLab is absent."""
import subprocess
import sys

SCRIPT = """
import sys

class NoOpenMMLab:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('mmengine', 'mmcv', 'mmdet', 'mmpretrain', 'mmseg'):
            raise ImportError(f'{name} is blocked')

sys.meta_path.insert(0, NoOpenMMLab())
import torch
import mod_squad.moe as moe
layer = moe.MoEMLP(8, num_experts=4, top_k=2, hidden_features=16, task_names=['a'])
print(tuple(layer(torch.randn(3, 8), 'a').shape))
"""


def test_moe_imports_and_runs_without_openmmlab():
    out = subprocess.run([sys.executable, '-c', SCRIPT], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == '(3, 8)'
