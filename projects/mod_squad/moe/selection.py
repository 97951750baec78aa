"""Which experts of a layer a task keeps when its model is extracted (pruning).

The authors' criterion (their ``pruning``): a task keeps an expert whose usage share
(of the task's top-k picks, in percent: ``100 * counts / counts.sum()``) exceeds
``threshold / k``, k being the layer's experts per token; a layer keeps at least k
experts, topped up by usage (the most used first). ``threshold`` 3 is their default:
with k = 4 it keeps the experts that take more than 0.75% of the picks. Two other
criteria keep a fixed number per layer: a ratio of the experts, or N of them, the
most used first and at least k.
"""
import math
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

import torch

from .stats import usage_share

#: The authors' default ``thresh``.
DEFAULT_THRESHOLD = 3.


@dataclass
class ExpertSelection:
    """One of three criteria (at most one set; none set means the authors'
    ``threshold=3``). Every criterion keeps at least the layer's k experts and at
    most all of them; ties in usage go to the lower expert id.

    Args:
        threshold (float, optional): Keep the experts whose share of the picks, in
            percent, exceeds ``threshold / k``.
        keep_ratio (float, optional): Keep ``ceil(keep_ratio * E)`` experts, in (0, 1].
        keep (int, optional): Keep the ``keep`` most used experts.
    """
    threshold: Optional[float] = None
    keep_ratio: Optional[float] = None
    keep: Optional[int] = None

    def __post_init__(self):
        given = [name for name in ('threshold', 'keep_ratio', 'keep')
                 if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f'Give one of threshold, keep_ratio and keep, got {given}.')
        if not given:
            self.threshold = DEFAULT_THRESHOLD
        if self.threshold is not None and self.threshold < 0:
            raise ValueError(f'threshold must be >= 0, got {self.threshold}.')
        if self.keep_ratio is not None and not 0. < self.keep_ratio <= 1.:
            raise ValueError(f'keep_ratio must be in (0, 1], got {self.keep_ratio}.')
        if self.keep is not None and self.keep < 1:
            raise ValueError(f'keep must be >= 1, got {self.keep}.')

    def __str__(self) -> str:
        if self.threshold is not None:
            t = self.threshold
            return f'threshold {t:g} (share of picks > {t:g}% / k)'
        if self.keep_ratio is not None:
            return f'keep_ratio {self.keep_ratio:g}'
        return f'keep {self.keep}'

    def select(self, usage: torch.Tensor, top_k: int) -> torch.Tensor:
        """Experts one task keeps in one layer.

        Args:
            usage (Tensor): (E,) the task's top-k picks per expert (counts, a running
                share, or any non-negative statistic: it is normalised to a share).
            top_k (int): k of the layer for the task: the least number kept.

        Returns:
            Tensor: (E_kept,) long, the kept expert ids in ascending order.
        """
        if usage.dim() != 1:
            raise ValueError(f'usage must be (E,), got shape {tuple(usage.shape)}.')
        num_experts = usage.numel()
        if not 0 < top_k <= num_experts:
            raise ValueError(f'top_k must be in [1, E={num_experts}], got {top_k}.')
        if (usage < 0).any() or not usage.sum() > 0:
            raise ValueError('usage must be non-negative with some mass: no tokens of '
                             'this task were routed through the layer.')
        share = usage_share(usage)
        # stable sort: among equal shares the lower id ranks first
        ranked = share.sort(descending=True, stable=True).indices
        if self.threshold is not None:
            num_keep = int((100. * share > self.threshold / top_k).sum())
        elif self.keep_ratio is not None:
            num_keep = math.ceil(self.keep_ratio * num_experts)
        else:
            num_keep = self.keep
        # above the threshold = the top of the ranking, so the top-up is the same cut
        num_keep = min(max(num_keep, top_k), num_experts)
        return ranked[:num_keep].sort().values

    def select_layers(self, layers: Mapping[str, Tuple[torch.Tensor, int]]
                      ) -> Dict[str, torch.Tensor]:
        """:meth:`select` for each layer name -> ``(usage (E,), top_k)``; errors name
        the layer."""
        kept = {}
        for name, (usage, top_k) in layers.items():
            try:
                kept[name] = self.select(usage, top_k)
            except ValueError as error:
                raise ValueError(f'Layer {name!r}: {error}') from None
        return kept
