"""Options shared by tools/train.py and tools/test.py."""
import argparse

import pytest
import torch

from mod_squad.engine.launch import add_runner_args, load_config

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
