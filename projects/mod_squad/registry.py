"""Registries of mod_squad (scope ``mod_squad``), children of mmengine's.

Components live in our own registries, so ``mod_squad.ModSquadViT`` resolves from any
scope. Model components meant for stock single-task configs are also registered into
mmdet's, mmseg's and mmpretrain's ``MODELS`` (:func:`register_model`), so that a stock
config can name them without a prefix after
``custom_imports = dict(imports=['mod_squad'], allow_failed_imports=False)``.
"""
import importlib

from mmengine.registry import DATA_SAMPLERS as MMENGINE_DATA_SAMPLERS
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import LOOPS as MMENGINE_LOOPS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import \
    OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import Registry

SCOPE = 'mod_squad'
#: Toolboxes whose ``MODELS`` registry also receives :func:`register_model` classes.
TOOLBOX_SCOPES = ('mmdet', 'mmseg', 'mmpretrain')

MODELS = Registry(
    'model', parent=MMENGINE_MODELS, scope=SCOPE, locations=['mod_squad.models'])
DATASETS = Registry(
    'dataset', parent=MMENGINE_DATASETS, scope=SCOPE,
    locations=['mod_squad.datasets'])
DATA_SAMPLERS = Registry(
    'data sampler', parent=MMENGINE_DATA_SAMPLERS, scope=SCOPE,
    locations=['mod_squad.datasets'])
TRANSFORMS = Registry(
    'transform', parent=MMENGINE_TRANSFORMS, scope=SCOPE,
    locations=['mod_squad.datasets'])
HOOKS = Registry(
    'hook', parent=MMENGINE_HOOKS, scope=SCOPE, locations=['mod_squad.engine'])
LOOPS = Registry(
    'loop', parent=MMENGINE_LOOPS, scope=SCOPE, locations=['mod_squad.engine'])
METRICS = Registry(
    'metric', parent=MMENGINE_METRICS, scope=SCOPE,
    locations=['mod_squad.evaluation'])
OPTIM_WRAPPER_CONSTRUCTORS = Registry(
    'optimizer wrapper constructor',
    parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
    scope=SCOPE,
    locations=['mod_squad.engine'])


def toolbox_models(scope: str) -> Registry:
    """The ``MODELS`` registry of an installed toolbox (``'mmdet'``, ...)."""
    return importlib.import_module(f'{scope}.registry').MODELS


def register_model(name=None):
    """Register a class into mod_squad's ``MODELS`` and every toolbox's ``MODELS``.

    Use for components a stock mmdet/mmseg/mmpretrain config should find by its plain
    name (backbones, necks). Components only our own configs use go through
    ``MODELS.register_module()``.
    """

    def _register(cls):
        MODELS.register_module(name=name, module=cls)
        for scope in TOOLBOX_SCOPES:
            toolbox_models(scope).register_module(name=name, module=cls)
        return cls

    return _register
