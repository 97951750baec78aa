"""Rescale single-stride ViT feature maps into a feature pyramid (as ViTDet)."""
from typing import Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.model import BaseModule
from mmpretrain.models.utils import LayerNorm2d


def _rescale_layer(channels: int, scale: float) -> nn.Module:
    if scale == 4:
        return nn.Sequential(
            nn.ConvTranspose2d(channels, channels, 2, stride=2),
            LayerNorm2d(channels), nn.GELU(),
            nn.ConvTranspose2d(channels, channels, 2, stride=2))
    if scale == 2:
        return nn.ConvTranspose2d(channels, channels, 2, stride=2)
    if scale == 1:
        return nn.Identity()
    if scale == 0.5:
        return nn.MaxPool2d(2, stride=2)
    raise ValueError(f'Unsupported pyramid scale {scale}; use 4, 2, 1 or 0.5.')


class SimplePyramid(BaseModule):
    """ViTDet's simple feature pyramid, without the output convs (an FPN neck adds
    those). A stride-16 map becomes strides 4/8/16/32 for scales (4, 2, 1, 0.5).

    Args:
        channels (int): Channels C of the input maps (kept at every scale).
        scales (Sequence[float]): Up/down-sampling factor of each output.
    """

    def __init__(self, channels: int, scales: Sequence[float] = (4, 2, 1, 0.5),
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.scales = tuple(scales)
        self.layers = nn.ModuleList(_rescale_layer(channels, s) for s in scales)

    def forward(self, feats: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        """feats: one (B, C, H, W) map for all scales, or one map per scale.

        Returns:
            One (B, C, H*s, W*s) map per scale s.
        """
        if len(feats) == 1:
            feats = list(feats) * len(self.layers)
        if len(feats) != len(self.layers):
            raise ValueError(f'SimplePyramid got {len(feats)} maps for '
                             f'{len(self.layers)} scales {self.scales}.')
        return tuple(layer(feat) for layer, feat in zip(self.layers, feats))
