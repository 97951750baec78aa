from .mod_squad_vit import ModSquadViT
from .shared_backbone_view import SharedBackboneView
from .simple_pyramid import SimplePyramid

__all__ = ['ModSquadViT', 'SharedBackboneView', 'SimplePyramid']
