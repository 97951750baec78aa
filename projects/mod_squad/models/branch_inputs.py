"""Does a task branch's neck take what its SharedBackboneView returns?"""
from mmdet.models.detectors import BaseDetector
from mmdet.models.necks import FPN as DetFPN
from mmseg.models.necks import FPN as SegFPN
from mmseg.models.segmentors import BaseSegmentor
from torch import nn

from .backbones import ViTOutputs

#: Necks that build a top-down pyramid from maps whose strides double per level.
PYRAMID_NECKS = (DetFPN, SegFPN)


def _describe(outputs: ViTOutputs) -> str:
    n = outputs.num_outputs
    if outputs.out_type in ViTOutputs.VECTOR_TYPES:
        return f'{n} (B, C) vector(s)'
    if outputs.out_type == 'raw':
        return f'{n} (B, N, C) token tensor(s)'
    if outputs.out_type == 'featmap_cls_token':
        return f'{n} [map, cls token] pair(s)'
    if outputs.out_type == 'pyramid':
        return f'{n} maps at scales {outputs.pyramid.scales}'
    return f'{n} map(s) of one stride'


def check_branch_inputs(task: str, branch: nn.Module) -> None:
    """Raise a ValueError naming the task, the ``out_type`` and the neck when the
    branch's neck (or, for a detector or segmentor, its first consumer) cannot take
    the outputs of its ``backbone``, a bound :class:`SharedBackboneView`.

    Checked: detectors and segmentors get feature maps; a neck with one
    ``in_channels`` entry per input (FPN, PAFPN, ChannelMapper, MultiLevelNeck, ...)
    gets that many maps of ``embed_dims`` channels; an FPN gets the simple pyramid,
    not maps of one stride.
    """
    outputs = branch.backbone.outputs
    embed_dims = branch.backbone.shared.embed_dims
    neck = getattr(branch, 'neck', None)
    gives = (f'Branch {task!r}: its SharedBackboneView (out_type='
             f'{outputs.out_type!r}, out_indices={outputs.out_indices}) gives '
             f'{_describe(outputs)}')
    maps = outputs.out_type in ('featmap', 'pyramid')
    if isinstance(branch, (BaseDetector, BaseSegmentor)) and not (
            maps or outputs.out_type == 'featmap_cls_token' and neck is None):
        raise ValueError(
            f'{gives}, but {type(branch).__name__} needs feature maps: use '
            "out_type='pyramid' for FPN-style necks, 'featmap' for single-stride "
            "necks and heads, 'featmap_cls_token' for mmseg's DPTHead (see the "
            "README's table of out types).")
    in_channels = getattr(neck, 'in_channels', None)
    if not isinstance(in_channels, (list, tuple)):
        return
    neck_name = f'{type(neck).__name__} neck (in_channels={list(in_channels)})'
    if not maps:
        raise ValueError(f"{gives}, but its {neck_name} takes feature maps: use "
                         "out_type='pyramid' or 'featmap'.")
    if len(in_channels) != outputs.num_outputs:
        raise ValueError(f'{gives}, but its {neck_name} takes {len(in_channels)}: '
                         'make out_indices (featmap) or pyramid_scales (pyramid) '
                         'give as many, or change the neck.')
    if any(c != embed_dims for c in in_channels):
        expected = [embed_dims] * len(in_channels)
        raise ValueError(f'{gives} of {embed_dims} channels, but its {neck_name} '
                         f'expects other widths: set in_channels={expected}.')
    if isinstance(neck, PYRAMID_NECKS) and outputs.out_type == 'featmap' and len(
            in_channels) > 1:
        raise ValueError(f'{gives}, but its {neck_name} builds its pyramid from maps '
                         "whose strides double from level to level (its head's "
                         "strides assume so): use out_type='pyramid'.")
