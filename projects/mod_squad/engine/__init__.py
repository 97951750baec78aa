from .checkpoint_loader import load_from_local

__all__ = ['load_from_local']
