"""Registries of mod_squad (scope ``mod_squad``), children of mmengine's.

Components live in our own registries, so ``mod_squad.ModSquadViT`` resolves from any
scope. Model components meant for stock single-task configs are also registered into
mmdet's, mmseg's and mmpretrain's ``MODELS`` (:func:`register_model`), so that a stock
config can name them without a prefix after
``custom_imports = dict(imports=['mod_squad'], allow_failed_imports=False)``.
"""
import importlib

from mmengine import registry as mmengine_registry
from mmengine.registry import Registry

SCOPE = 'mod_squad'
#: Toolboxes whose ``MODELS`` registry also receives :func:`register_model` classes.
TOOLBOX_SCOPES = ('mmdet', 'mmseg', 'mmpretrain')


def _child(name: str, locations=None) -> Registry:
    """Our child of mmengine's registry ``name`` (e.g. ``'MODELS'``)."""
    parent = getattr(mmengine_registry, name)
    return Registry(parent.name, parent=parent, scope=SCOPE, locations=locations or [])


# Every mmengine registry has a child here, so that ``default_scope='mod_squad'``
# finds them all without falling back (and warning).
RUNNERS = _child('RUNNERS')
RUNNER_CONSTRUCTORS = _child('RUNNER_CONSTRUCTORS')
FUNCTIONS = _child('FUNCTIONS')
LOOPS = _child('LOOPS', ['mod_squad.engine'])
HOOKS = _child('HOOKS', ['mod_squad.engine'])
LOG_PROCESSORS = _child('LOG_PROCESSORS')
DATASETS = _child('DATASETS', ['mod_squad.datasets'])
DATA_SAMPLERS = _child('DATA_SAMPLERS', ['mod_squad.datasets'])
TRANSFORMS = _child('TRANSFORMS', ['mod_squad.datasets'])
MODELS = _child('MODELS', ['mod_squad.models'])
MODEL_WRAPPERS = _child('MODEL_WRAPPERS')
WEIGHT_INITIALIZERS = _child('WEIGHT_INITIALIZERS')
OPTIMIZERS = _child('OPTIMIZERS')
OPTIM_WRAPPERS = _child('OPTIM_WRAPPERS')
OPTIM_WRAPPER_CONSTRUCTORS = _child('OPTIM_WRAPPER_CONSTRUCTORS', ['mod_squad.engine'])
PARAM_SCHEDULERS = _child('PARAM_SCHEDULERS')
METRICS = _child('METRICS')
EVALUATOR = _child('EVALUATOR')
TASK_UTILS = _child('TASK_UTILS')
VISUALIZERS = _child('VISUALIZERS')
VISBACKENDS = _child('VISBACKENDS')
INFERENCERS = _child('INFERENCERS')


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
