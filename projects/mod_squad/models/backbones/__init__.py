from .mod_squad_vit import ModSquadViT
from .shared_backbone_view import SharedBackboneView
from .simple_pyramid import SimplePyramid
from .vit_outputs import ViTOutputs

__all__ = ['ModSquadViT', 'SharedBackboneView', 'SimplePyramid', 'ViTOutputs']
