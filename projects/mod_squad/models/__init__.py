from .backbones import ModSquadViT, SharedBackboneView, SimplePyramid, ViTOutputs
from .multi_task_data_preprocessor import MultiTaskDataPreprocessor
from .multi_task_model import ModSquadMultiTaskModel

__all__ = [
    'ModSquadViT', 'SharedBackboneView', 'SimplePyramid', 'ViTOutputs',
    'MultiTaskDataPreprocessor',
    'ModSquadMultiTaskModel'
]
