"""A pre-norm ViT block whose attention and/or MLP can be a mixture of experts."""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks.drop import DropPath
from mmcv.cnn.bricks.transformer import FFN
from mmengine.model import BaseModule
from mmpretrain.models.utils import MultiheadAttention

from mod_squad.moe import MoAttention, MoEMLP, RouterConfig
from mod_squad.moe.adapter import AdapterConfig, VMTAdapter


def window_partition(x: torch.Tensor, hw: Tuple[int, int],
                     window_size: int) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """Split patch tokens into non-overlapping windows, padding with zeros.

    Args:
        x: (B, H*W, C) tokens in row-major order.
        hw: (H, W) of the token grid.
        window_size: side of a square window.

    Returns:
        (B*nW, ws*ws, C) windows and the padded grid size (Hp, Wp).
    """
    B, _, C = x.shape
    H, W = hw
    x = x.view(B, H, W, C)
    pad_h, pad_w = (-H) % window_size, (-W) % window_size
    x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    x = x.view(B, Hp // window_size, window_size, Wp // window_size, window_size, C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, C)
    return x, (Hp, Wp)


def window_unpartition(windows: torch.Tensor, hw: Tuple[int, int],
                       padded_hw: Tuple[int, int], window_size: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B*nW, ws*ws, C) -> (B, H*W, C)."""
    H, W = hw
    Hp, Wp = padded_hw
    C = windows.shape[-1]
    x = windows.view(-1, Hp // window_size, Wp // window_size, window_size,
                     window_size, C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, Hp, Wp, C)
    return x[:, :H, :W].reshape(-1, H * W, C)


class ModSquadBlock(BaseModule):
    """ViT block (pre-norm attention + MLP) with optional mixture-of-experts parts.

    Dense parts use the same modules and parameter names as mmpretrain's
    ``VisionTransformer`` (``ln1``, ``attn.qkv``, ``attn.proj``, ``ln2``, ``ffn.layers``),
    so dense checkpoints map onto them one to one.

    Args:
        embed_dims (int): Token width C.
        num_heads (int): Heads of the dense attention.
        feedforward_channels (int): Hidden width of the dense MLP.
        task_names (Sequence[str]): Tasks with their own routers.
        moa (dict, optional): ``num_experts``, ``top_k`` and ``head_dims`` of a
            mixture of attention heads replacing the dense attention. Defaults to None
            (dense).
        moe_mlp (dict, optional): ``num_experts``, ``top_k`` and ``hidden_features`` of
            a mixture-of-experts MLP replacing the dense MLP. Defaults to None (dense).
        router_cfg (RouterConfig, optional): Routers, auxiliary losses and expert path
            of both mixtures, passed to them unchanged.
        window_size (int): Attention inside windows of this side over the patch
            tokens; 0 means global attention. Defaults to 0.
        adapter (AdapterConfig, optional): A :class:`VMTAdapter` in parallel to the
            MLP (``adapter.*``). Defaults to None.
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 feedforward_channels: int,
                 task_names: Sequence[str],
                 moa: Optional[dict] = None,
                 moe_mlp: Optional[dict] = None,
                 router_cfg: Optional[RouterConfig] = None,
                 window_size: int = 0,
                 adapter: Optional[AdapterConfig] = None,
                 drop_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 qkv_bias: bool = True,
                 norm_cfg: dict = dict(type='LN', eps=1e-6),
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.window_size = window_size
        self.ln1 = build_norm_layer(norm_cfg, embed_dims)[1]
        if moa is not None:
            self.attn = MoAttention(
                embed_dims,
                task_names=task_names,
                qkv_bias=qkv_bias,
                attn_drop=attn_drop_rate,
                proj_drop=drop_rate,
                router_cfg=router_cfg,
                **moa)
        else:
            self.attn = MultiheadAttention(
                embed_dims,
                num_heads,
                attn_drop=attn_drop_rate,
                proj_drop=drop_rate,
                qkv_bias=qkv_bias)
        self.ln2 = build_norm_layer(norm_cfg, embed_dims)[1]
        if moe_mlp is not None:
            self.ffn = MoEMLP(
                embed_dims, task_names=task_names, drop=drop_rate,
                router_cfg=router_cfg, **moe_mlp)
        else:
            self.ffn = FFN(
                embed_dims=embed_dims,
                feedforward_channels=feedforward_channels,
                ffn_drop=drop_rate,
                act_cfg=dict(type='GELU'),
                add_identity=False)
        self.adapter = (VMTAdapter(embed_dims, task_names, adapter)
                        if adapter is not None else None)
        self.drop_path = DropPath(drop_path_rate)

    @property
    def is_moa(self) -> bool:
        return isinstance(self.attn, MoAttention)

    @property
    def is_moe_mlp(self) -> bool:
        return isinstance(self.ffn, MoEMLP)

    def _attention(self, x: torch.Tensor, task: str) -> torch.Tensor:
        return self.attn(x, task) if self.is_moa else self.attn(x)

    def forward(self, x: torch.Tensor, task: str,
                hw: Tuple[int, int]) -> torch.Tensor:
        """x: (B, N, C) -> (B, N, C); ``hw`` is the patch grid (windowed attention)."""
        y = self.ln1(x)
        if self.window_size > 0:
            windows, padded_hw = window_partition(y, hw, self.window_size)
            y = window_unpartition(
                self._attention(windows, task), hw, padded_hw, self.window_size)
        else:
            y = self._attention(y, task)
        x = x + self.drop_path(y)
        y = self.ln2(x)
        out = self.ffn(y, task) if self.is_moe_mlp else self.ffn(y)
        if self.adapter is not None:
            out = out + self.adapter(y, task)
        return x + self.drop_path(out)
