"""Per-task expert usage statistics of MoE layers.

Each MoE layer (:class:`~.moe_mlp.MoEMLP`, :class:`~.moa.MoAttention`) owns an
:class:`ExpertUsage` at ``<layer>.usage``, updated on every forward (training and
evaluation, not during the recomputation of activation checkpointing) under no_grad,
on device, with no host sync. Its buffers are non-persistent: they are not saved in
checkpoints, and with ``broadcast_buffers=False`` (mmengine's default) DDP leaves them
per rank; :meth:`ExpertUsage.all_reduce` sums them over ranks.

Readers: :func:`expert_usage_modules` (layer name -> module), :func:`stack_expert_usage`
((L, T, E) tensor), :func:`reset_expert_usage`, :func:`all_reduce_expert_usage`, and
:func:`usage_share`, :func:`usage_entropy`, :func:`num_experts_used` on top.
"""
from typing import Dict, List, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .router import RouterOutput

FIELDS = ('counts', 'prob_mass', 'tokens')


class ExpertUsage(nn.Module):
    """Per-task usage of the E experts of one layer.

    Buffers (non-persistent):
        counts: (T, E) long, tokens routed to each expert (a token counts once for
            each of its k experts).
        prob_mass: (T, E) float64, summed router probabilities.
        tokens: (T,) long, tokens routed.

    Args:
        num_tasks (int): T.
        num_experts (int): E.
    """

    def __init__(self, num_tasks: int, num_experts: int):
        super().__init__()
        self.register_buffer(
            'counts', torch.zeros(num_tasks, num_experts, dtype=torch.long),
            persistent=False)
        self.register_buffer(
            'prob_mass', torch.zeros(num_tasks, num_experts, dtype=torch.float64),
            persistent=False)
        self.register_buffer(
            'tokens', torch.zeros(num_tasks, dtype=torch.long), persistent=False)

    @torch.no_grad()
    def update(self, task_index: int, route: RouterOutput,
               counts: torch.Tensor) -> None:
        """Add the routing of N tokens of task ``task_index``; ``counts`` (E,) are its
        slots per expert (:attr:`~.dispatch.TokenDispatch.counts`)."""
        self.counts[task_index] += counts
        self.prob_mass[task_index] += route.probs.sum(dim=0).to(torch.float64)
        self.tokens[task_index] += route.probs.shape[0]

    def reset(self) -> None:
        for name in FIELDS:
            getattr(self, name).zero_()

    def all_reduce(self) -> None:
        """Sum the statistics over ranks (no-op unless torch.distributed is up)."""
        if dist.is_available() and dist.is_initialized():
            for name in FIELDS:
                dist.all_reduce(getattr(self, name))


def expert_usage_modules(model: nn.Module) -> Dict[str, ExpertUsage]:
    """The :class:`ExpertUsage` of every MoE layer, by layer name, in model order."""
    return {
        name.rpartition('.')[0]: module
        for name, module in model.named_modules() if isinstance(module, ExpertUsage)
    }


def stack_expert_usage(model: nn.Module,
                       field: str = 'counts') -> Tuple[List[str], torch.Tensor]:
    """One statistic of every MoE layer as an (L, T, E) tensor.

    Args:
        model (nn.Module): Model holding MoE layers.
        field (str): ``'counts'`` or ``'prob_mass'``.

    Returns:
        tuple: Layer names and the (L, T, E_max) stack; layers with fewer experts
        (e.g. MoA next to MoE MLPs) are zero-padded to E_max.
    """
    if field not in FIELDS[:2]:
        raise ValueError(f'field must be one of {FIELDS[:2]}, got {field!r}.')
    modules = expert_usage_modules(model)
    if not modules:
        return [], torch.zeros(0, 0, 0)
    stats = [getattr(m, field) for m in modules.values()]
    num_experts = max(s.shape[-1] for s in stats)
    stack = torch.stack([F.pad(s, (0, num_experts - s.shape[-1])) for s in stats])
    return list(modules), stack


def reset_expert_usage(model: nn.Module) -> None:
    for module in expert_usage_modules(model).values():
        module.reset()


def all_reduce_expert_usage(model: nn.Module) -> None:
    for module in expert_usage_modules(model).values():
        module.all_reduce()


def usage_share(stat: torch.Tensor) -> torch.Tensor:
    """(..., E) counts or mass -> share of each expert (rows of zeros stay zero)."""
    stat = stat.double()
    return stat / stat.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def usage_entropy(stat: torch.Tensor) -> torch.Tensor:
    """(..., E) counts or mass -> entropy (nats) of the expert share, shape (...)."""
    share = usage_share(stat)
    return -torch.xlogy(share, share).sum(dim=-1)


def num_experts_used(stat: torch.Tensor, threshold: float = 0.) -> torch.Tensor:
    """(..., E) counts or mass -> experts whose share exceeds ``threshold``, (...)."""
    return (usage_share(stat) > threshold).sum(dim=-1)
