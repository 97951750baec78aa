"""Shared fixtures. OpenMMLab is imported inside them, so that tests/test_moe also
runs on a machine with only PyTorch."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

DEMO_CONFIG = 'configs/mod_squad/mod-squad_vit-demo_2k_synthetic-cls-det-seg.py'
DEMO_DATA_ROOT = 'data/synthetic/'


@pytest.fixture(scope='session')
def synthetic(load_script):
    """The synthetic data generator, ``tools/dataset_converters/make_synthetic.py``."""
    return load_script('tools/dataset_converters/make_synthetic.py')


@pytest.fixture(scope='session')
def synthetic_root(synthetic, tmp_path_factory):
    """A small copy of the bundled synthetic data (all three tasks)."""
    root = tmp_path_factory.mktemp('synthetic')
    synthetic.generate_all(
        str(root),
        seed=0,
        cls=dict(num_train=40, num_val=20),
        det=dict(num_train=8, num_val=4),
        seg=dict(num_train=8, num_val=4))
    return root


@pytest.fixture(scope='session')
def load_script():
    """Import a script of the repository (e.g. ``tools/test.py``) as a module."""

    def load(path: str):
        file = Path(__file__).parents[1] / path
        spec = importlib.util.spec_from_file_location(file.stem, file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope='session')
def stock_config():
    """Load a config shipped with an installed toolbox (``'mmdet'``, ...), with
    ``mod_squad`` in its ``custom_imports`` and the top-level preprocessor moved into
    the model, as the toolboxes' runners do."""
    from mmengine.config import Config

    def load(scope: str, relative_path: str):
        package = importlib.import_module(scope)
        cfg = Config.fromfile(
            str(Path(package.__file__).parent / '.mim' / 'configs' / relative_path))
        cfg.custom_imports = dict(imports=['mod_squad'], allow_failed_imports=False)
        cfg = Config.fromstring(cfg.pretty_text, '.py')
        if cfg.get('data_preprocessor') is not None:
            cfg.model.setdefault('data_preprocessor', cfg.data_preprocessor)
        return cfg

    return load


@pytest.fixture(scope='session')
def build_in_scope():
    """Build a model config in a toolbox's scope, as its runner does."""
    from mmengine.registry import DefaultScope, init_default_scope

    from mod_squad.registry import toolbox_models

    def build(scope: str, model_cfg):
        init_default_scope(scope)
        with DefaultScope.overwrite_default_scope(scope):
            return toolbox_models(scope).build(model_cfg)

    return build


def retarget(cfg, old: str, new: str):
    """Replace the prefix ``old`` of every string in a config tree by ``new``."""
    if isinstance(cfg, dict):
        return type(cfg)({k: retarget(v, old, new) for k, v in cfg.items()})
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(retarget(v, old, new) for v in cfg)
    if isinstance(cfg, str) and cfg.startswith(old):
        return new + cfg[len(old):]
    return cfg


@pytest.fixture
def demo_cfg(synthetic_root):
    """The demo config, reading the small synthetic copy."""
    from mmengine.config import Config
    cfg = Config.fromfile(DEMO_CONFIG)
    return Config(retarget(cfg.to_dict(), DEMO_DATA_ROOT, f'{synthetic_root}/'))


@pytest.fixture(scope='module')
def demo_checkpoint(tmp_path_factory):
    """The demo model as initialised (seeded), saved with the tasks'
    ``dataset_meta`` as mmengine's runner saves it; returns (config, path)."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from mod_squad.registry import MODELS
    cfg = Config.fromfile(DEMO_CONFIG)
    init_default_scope('mod_squad')
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    meta = dict(cls=dict(classes=cfg.cls_classes), det=dict(classes=cfg.det_classes),
                seg=dict(classes=cfg.seg_classes,
                         palette=[[20 * i, 255 - 20 * i, 0] for i in range(9)]))
    path = tmp_path_factory.mktemp('ckpt') / 'demo.pth'
    torch.save(dict(state_dict=model.state_dict(), meta=dict(dataset_meta=meta)), path)
    return cfg, str(path)


@pytest.fixture(scope='module')
def image_file(tmp_path_factory):
    """A (96, 128) BGR picture of two shapes on a gradient, as a .jpg."""
    import mmcv
    img = np.zeros((96, 128, 3), np.uint8)
    img[..., 1] = np.linspace(0, 200, 128, dtype=np.uint8)
    img[20:50, 10:40] = (0, 0, 255)
    img[50:90, 70:120] = (255, 0, 0)
    path = tmp_path_factory.mktemp('img') / 'shapes.jpg'
    mmcv.imwrite(img, str(path))
    return str(path)
