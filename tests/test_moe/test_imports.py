"""mod_squad.moe is plain PyTorch: importing it pulls in no OpenMMLab package."""
import os.path as osp
import subprocess
import sys

import mod_squad.moe

SCRIPT = """
import sys, types
package = types.ModuleType('mod_squad')  # skip mod_squad/__init__ (OpenMMLab side)
package.__path__ = [{root!r}]
sys.modules['mod_squad'] = package
import mod_squad.moe
openmmlab = ('mmengine', 'mmcv', 'mmdet', 'mmpretrain', 'mmseg')
print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}} & set(openmmlab))))
"""


def test_moe_imports_only_torch():
    root = osp.dirname(osp.dirname(mod_squad.moe.__file__))
    out = subprocess.run([sys.executable, '-c', SCRIPT.format(root=root)],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ''
