from .mod_squad_vit import ModSquadViT
from .simple_pyramid import SimplePyramid

__all__ = ['ModSquadViT', 'SimplePyramid']
