"""tools/dist_train.sh: two CPU processes (gloo) train the demo config jointly."""
import os
import os.path as osp
import re
import socket
import subprocess
import sys


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def test_two_process_demo_training(demo_cfg, tmp_path):
    config = str(tmp_path / 'demo.py')
    demo_cfg.train_dataloader.num_workers = 0
    demo_cfg.train_dataloader.persistent_workers = False
    demo_cfg.dump(config)
    env = dict(os.environ, PORT=str(free_port()), OMP_NUM_THREADS='1',
               PATH=osp.dirname(sys.executable) + os.pathsep + os.environ['PATH'])
    result = subprocess.run(
        ['bash', 'tools/dist_train.sh', config, '2', '--work-dir',
         str(tmp_path / 'work'), '--cfg-options', 'train_cfg.max_iters=6',
         'train_cfg.val_interval=100', 'default_hooks.logger.interval=2',
         'default_hooks.checkpoint.interval=6', 'custom_hooks=[]'],
        capture_output=True, text=True, timeout=600, env=env)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert 'Distributed training: True' in log and 'GPU number: 2' in log
    assert re.search(r'Iter\(train\) \[6/6\].*loss:', log), log[-3000:]
    assert osp.exists(tmp_path / 'work' / 'iter_6.pth')
