"""mod_squad: a modular mixture-of-experts ViT trained jointly on heterogeneous tasks.

Importing the package registers its OpenMMLab components (see
:mod:`mod_squad.registry`). :mod:`mod_squad.moe` needs only PyTorch: without
OpenMMLab installed, the package imports and ``mod_squad.moe`` works on its own.
"""
from .version import __version__

try:
    import mmengine  # noqa: F401
except ImportError:  # plain-PyTorch use of mod_squad.moe
    pass
else:
    from . import datasets, engine, models  # noqa: F401  (register components)

__all__ = ['__version__']
