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


def test_auto_scale_lr_counts_the_named_tasks_batch():
    from mod_squad.engine.launch import enable_auto_scale_lr
    cfg = load_config(parse())
    assert cfg.auto_scale_lr == dict(enable=False, base_batch_size=32, task='cls')
    enable_auto_scale_lr(cfg)
    assert cfg.auto_scale_lr.enable and cfg.train_dataloader.batch_size == 32
    assert cfg.train_dataloader.batch_sampler.batch_sizes == dict(cls=32, det=4, seg=4)
    cfg.auto_scale_lr = dict(base_batch_size=64)
    with pytest.raises(RuntimeError, match="auto_scale_lr.task=None"):
        enable_auto_scale_lr(cfg)
    cfg.pop('auto_scale_lr')
    with pytest.raises(RuntimeError, match='needs auto_scale_lr'):
        enable_auto_scale_lr(cfg)


def test_auto_scale_lr_scales_by_the_task_batch(demo_cfg, tmp_path, load_script):
    tool = load_script('tools/train.py')
    demo_cfg.auto_scale_lr = dict(base_batch_size=64, task='cls')
    config = tmp_path / 'demo.py'
    demo_cfg.dump(config)
    runner = tool.build_runner(tool.parse_args(
        [str(config), '--auto-scale-lr', '--no-validate', '--work-dir', str(tmp_path)]))
    runner._train_loop = runner.build_train_loop(runner._train_loop)
    runner.optim_wrapper = runner.build_optim_wrapper(runner.optim_wrapper)
    runner.scale_lr(runner.optim_wrapper, runner.auto_scale_lr)
    # one process, 32 cls images per iteration, lr tuned for 64: halved
    assert runner.optim_wrapper.get_lr()['lr'][0] == pytest.approx(2e-4 / 2)
    assert runner.val_loop is None


def test_no_validate_drops_the_loop_and_the_best_checkpoint():
    from mod_squad.engine.launch import disable_validation
    cfg = load_config(parse())
    disable_validation(cfg)
    assert cfg.val_cfg is None and cfg.val_dataloader is None
    assert cfg.val_evaluator is None
    assert 'save_best' not in cfg.default_hooks.checkpoint


def test_dump_predictions_one_file_per_task():
    from mod_squad.engine.launch import dump_predictions
    cfg = load_config(parse())
    with pytest.raises(ValueError, match='must be a .pkl'):
        dump_predictions(cfg, 'preds.json')
    dump_predictions(cfg, 'out/preds.pkl')
    assert cfg.test_evaluator.det[-1] == dict(
        _scope_='mmdet', type='DumpDetResults', out_file_path='out/preds_det.pkl')
    assert cfg.test_evaluator.cls[-1] == dict(
        _scope_='mmengine', type='DumpResults', out_file_path='out/preds_cls.pkl')
    assert cfg.test_evaluator.seg[0].type == 'IoUMetric'


def test_show_dir_switches_each_tasks_stock_hook(tmp_path):
    from mod_squad.engine.launch import show_predictions
    cfg = load_config(parse())
    show_predictions(cfg, str(tmp_path))
    hook = cfg.custom_hooks[-1]
    assert hook.type == 'mod_squad.MultiTaskVisualizationHook'
    assert hook.hooks.det.test_out_dir == str(tmp_path / 'det')
    assert hook.hooks.cls.out_dir == str(tmp_path / 'cls') and hook.hooks.cls.enable
    assert hook.hooks.seg.draw and hook.visualizers.seg.save_dir == str(tmp_path / 'seg')
