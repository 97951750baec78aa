from .backbones import ModSquadViT, SimplePyramid

__all__ = ['ModSquadViT', 'SimplePyramid']
