"""Options shared by tools/train.py and tools/test.py."""
import argparse

import pytest
import torch

from mmengine.config import Config

from mod_squad.engine.launch import add_runner_args, load_config, set_resume

DEMO_CONFIG = 'configs/mod_squad/mod-squad_vit-demo_2k_synthetic-cls-det-seg.py'


def parse(*argv):
    parser = argparse.ArgumentParser()
    parser.add_argument('config')
    add_runner_args(parser)
    return parser.parse_args([DEMO_CONFIG, *argv])


def test_defaults_and_overrides():
    cfg = load_config(parse('--cfg-options', 'train_cfg.max_iters=7'))
    assert cfg.work_dir == './work_dirs/mod-squad_vit-demo_2k_synthetic-cls-det-seg'
    assert cfg.train_cfg.max_iters == 7 and cfg.launcher == 'none'
    assert load_config(parse('--work-dir', 'elsewhere')).work_dir == 'elsewhere'


@pytest.mark.skipif(torch.cuda.is_available(), reason='CPU machines use gloo')
def test_distributed_launch_without_cuda_uses_gloo():
    cfg = load_config(parse('--launcher', 'pytorch'))
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg.device_ids is None
    assert cfg.model_wrapper_cfg.find_unused_parameters  # the demo config's, kept
    assert load_config(parse()).env_cfg.dist_cfg.backend == 'nccl'


def resume_cfg(work_dir, resume):
    cfg = Config(dict(work_dir=str(work_dir), resume=False, load_from='weights.pth'))
    set_resume(cfg, resume)
    return cfg.resume, cfg.load_from


def test_resume_option(tmp_path):
    assert resume_cfg(tmp_path, None) == (False, 'weights.pth')
    assert resume_cfg(tmp_path, 'ckpt.pth') == (True, 'ckpt.pth')
    # Nothing to resume from: a new run (mmengine would read last_checkpoint again).
    assert resume_cfg(tmp_path, 'auto') == (False, None)
    (tmp_path / 'last_checkpoint').write_text('')
    torch.save({}, tmp_path / 'iter_3.pth')
    assert resume_cfg(tmp_path, 'auto') == (True, f'{tmp_path}/iter_3.pth')
