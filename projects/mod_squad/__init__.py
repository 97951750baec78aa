"""mod_squad: a modular mixture-of-experts ViT trained jointly on heterogeneous tasks.

Importing the package registers its components (see :mod:`mod_squad.registry`).
"""
from . import engine, models  # noqa: F401  (register components)
from .version import __version__

__all__ = ['__version__']
