"""VMT-Adapter: one multi-task adapter per block, shared projections and a tiny module
per task (Xin et al., "VMT-Adapter: Parameter-Efficient Transfer Learning for
Multi-Task Dense Scene Understanding", AAAI 2024).

Per block, in parallel to the MLP (on the MLP's normed input, added to its output):
``x (.., C) -> down (C -> r) -> ReLU -> task module of the forward's task (r -> r)
-> up (r -> C) -> * scale``. The projections are shared by all tasks; a task module
is ``2 r`` (scale and shift) or ``r^2 + r`` (linear) parameters, so tasks add almost
no parameters, and a forward runs one task module: O(1) in the number of tasks. The
Lite variant has no up-projection of its own: it is the transposed down-projection.

Task modules start at zero, so a model with fresh adapters computes exactly what it
computed without them: a trained checkpoint plus adapters starts where it was.
"""
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import _from_dict

ADAPTER_VARIANTS = ('vmt', 'vmt_lite')
TASK_MODULES = ('scale_shift', 'linear')


@dataclass
class AdapterConfig:
    """Adapters of a backbone (one object per model, as :class:`RouterConfig`).

    Args:
        variant (str): ``'vmt'`` (own down (r, C) and up (C, r) projections) or
            ``'vmt_lite'`` (up-projection = down-projection transposed).
        dims (int): Bottleneck width r. Defaults to 64.
        task_module (str): Per task, ``'scale_shift'`` (r scales and r shifts, as
            SSF) or ``'linear'`` (an r x r map and r biases). Defaults to
            ``'scale_shift'``.
        scale (float): Constant factor on the adapter output. Defaults to 1.
        blocks (Sequence[int], optional): Indices of the blocks with an adapter
            (negative ones count from the end); None (default): every block.
    """
    variant: str = 'vmt'
    dims: int = 64
    task_module: str = 'scale_shift'
    scale: float = 1.
    blocks: Optional[Sequence[int]] = None

    def __post_init__(self):
        if self.variant not in ADAPTER_VARIANTS:
            raise ValueError(f'adapter variant must be one of {ADAPTER_VARIANTS}, got '
                             f'{self.variant!r}.')
        if self.task_module not in TASK_MODULES:
            raise ValueError(f'adapter task_module must be one of {TASK_MODULES}, got '
                             f'{self.task_module!r}.')
        if (isinstance(self.dims, bool) or not isinstance(self.dims, int)
                or self.dims <= 0):
            raise ValueError(f'adapter dims must be a positive int, got {self.dims!r}.')

    @classmethod
    def build(cls, cfg: Union[dict, 'AdapterConfig']) -> 'AdapterConfig':
        """An :class:`AdapterConfig` from a dict of its fields (a config's
        ``adapter``; ``type`` is accepted as another name of ``variant``) or an
        instance (returned as is)."""
        if isinstance(cfg, cls):
            return cfg
        if not isinstance(cfg, dict):
            raise TypeError(f'adapter must be a dict of AdapterConfig fields, got '
                            f'{cfg!r}.')
        cfg = dict(cfg)
        if 'type' in cfg:
            if 'variant' in cfg:
                raise ValueError('adapter: give type or variant, not both.')
            cfg['variant'] = cfg.pop('type')
        return _from_dict(cls, cfg, 'adapter')


class VMTAdapter(nn.Module):
    """Multi-task adapter of one block.

    Parameters: ``down_weight (r, C)``, ``down_bias (r)``, ``up_weight (C, r)`` (not
    in Lite), ``up_bias (C)``, and per task ``task_scale.<task>``,
    ``task_shift.<task>`` (r) or ``task_weight.<task> (r, r)``,
    ``task_bias.<task> (r)``.

    Args:
        embed_dims (int): Token width C.
        task_names (Sequence[str]): Tasks with their own task module.
        cfg (AdapterConfig): Variant, width and task module.
    """

    def __init__(self, embed_dims: int, task_names: Sequence[str], cfg: AdapterConfig):
        super().__init__()
        self.task_names = tuple(task_names)
        self.scale = cfg.scale
        r = cfg.dims
        self.down_weight = nn.Parameter(torch.empty(r, embed_dims))
        self.down_bias = nn.Parameter(torch.zeros(r))
        self.up_weight = (nn.Parameter(torch.empty(embed_dims, r))
                          if cfg.variant == 'vmt' else None)
        self.up_bias = nn.Parameter(torch.zeros(embed_dims))
        for weight in (self.down_weight, self.up_weight):
            if weight is not None:
                nn.init.trunc_normal_(weight, std=0.02)
        self.linear_task_module = cfg.task_module == 'linear'
        shapes = (dict(task_weight=(r, r), task_bias=(r, )) if self.linear_task_module
                  else dict(task_scale=(r, ), task_shift=(r, )))
        for name, shape in shapes.items():
            self.add_module(name, nn.ParameterDict(
                {task: nn.Parameter(torch.zeros(shape)) for task in self.task_names}))

    def forward(self, x: torch.Tensor, task: str) -> torch.Tensor:
        """x: (..., C) tokens of ``task`` -> (..., C), to add to the MLP's output."""
        if task not in self.task_names:
            raise ValueError(f'Unknown task {task!r}; this adapter has tasks '
                             f'{list(self.task_names)}.')
        h = F.relu(F.linear(x, self.down_weight, self.down_bias))
        if self.linear_task_module:
            h = F.linear(h, self.task_weight[task], self.task_bias[task])
        else:
            h = h * self.task_scale[task] + self.task_shift[task]
        up = self.down_weight.t() if self.up_weight is None else self.up_weight
        return self.scale * F.linear(h, up, self.up_bias)


def adapter_modules(model: nn.Module) -> Dict[str, VMTAdapter]:
    """Every :class:`VMTAdapter` of ``model`` by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, VMTAdapter)}
