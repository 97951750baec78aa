"""Layer-wise learning-rate decay for any model that holds one ModSquadViT."""
from typing import Callable, List, Optional, Tuple

from mmpretrain.engine.optimizers import LearningRateDecayOptimWrapperConstructor
from torch import nn

from mod_squad.models import ModSquadViT
from mod_squad.registry import OPTIM_WRAPPER_CONSTRUCTORS


def _find_vit(model: nn.Module) -> Tuple[str, ModSquadViT]:
    """(prefix of its parameter names, the ModSquadViT) inside ``model``."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, ModSquadViT)]
    if len(found) != 1:
        raise TypeError(
            'LayerDecayOptimWrapperConstructor needs exactly one ModSquadViT in the '
            f'model; {type(model).__name__} has {len(found)}'
            f'{" at " + str([name for name, _ in found]) if found else ""}.')
    name, vit = found[0]
    return f'{name}.' if name else '', vit


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimWrapperConstructor(LearningRateDecayOptimWrapperConstructor):
    """mmpretrain's layer-wise learning-rate decay, with the depths of the
    ModSquadViT found anywhere in the model (:meth:`ModSquadViT.get_layer_depth`).

    mmpretrain's constructor asks the model for ``get_layer_depth``, which only its
    classifiers have; mmseg's picks rules by backbone class name. This one works in
    stock mmpretrain, mmdet and mmseg models and in the multi-task model alike: a
    parameter at depth d (0: stem, i + 1: block i, L + 1: everything else: necks,
    heads, output modules) gets ``lr * layer_decay_rate ** (L + 1 - d)``.
    ``paramwise_cfg`` keys are mmpretrain's (``layer_decay_rate``, ``norm_decay_mult``,
    ``bias_decay_mult``, ``flat_decay_mult``, ``custom_keys`` with ``decay_mult``).

    Example::

        optim_wrapper = dict(
            optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
            constructor='mod_squad.LayerDecayOptimWrapperConstructor',
            paramwise_cfg=dict(layer_decay_rate=0.7))
    """

    def add_params(self,
                   params: List[dict],
                   module: nn.Module,
                   prefix: str = '',
                   get_layer_depth: Optional[Callable] = None,
                   **kwargs) -> None:
        if get_layer_depth is None:
            vit_prefix, vit = _find_vit(module)

            def get_layer_depth(param_name: str) -> Tuple[int, int]:
                return vit.get_layer_depth(param_name, vit_prefix)

        super().add_params(params, module, prefix, get_layer_depth, **kwargs)
