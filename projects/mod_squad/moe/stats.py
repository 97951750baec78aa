"""Per-task expert usage statistics of MoE layers.

Each MoE layer (:class:`~.moe_mlp.MoEMLP`, :class:`~.moa.MoAttention`) owns an
:class:`ExpertUsage` at ``<layer>.usage``, updated under no_grad, on device, with no
host sync, never during the recomputation of activation checkpointing. It keeps two
forms of the same routing counts:

- cumulative (``counts``, ``prob_mass``, ``tokens``): sums over every forward,
  training and evaluation, since the last reset;
- running (``running_share``): the authors' pruning statistic, an exponential moving
  average (momentum 0.95) of each training forward's share of top-k picks, per task,
  so that usage early in a long training run fades instead of dominating what pruning
  keeps. Only training forwards (autograd on) update it, not validation or test.

Its buffers are non-persistent: they are not saved in checkpoints (the
``ExpertUsageHook`` saves them), and with ``broadcast_buffers=False`` (mmengine's
default) DDP leaves them per rank; :meth:`ExpertUsage.all_reduce` sums the cumulative
form and averages the running one over ranks.

Readers: :func:`expert_usage_modules` (layer name -> module), :func:`stack_expert_usage`
((L, T, E) tensor of either form), :func:`reset_expert_usage`,
:func:`all_reduce_expert_usage`, and :func:`usage_share`, :func:`usage_entropy`,
:func:`num_experts_used`, :func:`experts_to_cover` on top.
"""
from typing import Dict, List, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .router import RouterOutput

CUMULATIVE_FIELDS = ('counts', 'prob_mass', 'tokens')
RUNNING_FIELDS = ('running_share', )
FIELDS = CUMULATIVE_FIELDS + RUNNING_FIELDS
#: The (T, E) statistics :func:`stack_expert_usage` reads.
STATISTICS = ('counts', 'prob_mass', 'running_share')
#: The authors' running-average momentum of the per-task usage (old weight).
RUNNING_MOMENTUM = 0.95


class ExpertUsage(nn.Module):
    """Per-task usage of the E experts of one layer.

    Buffers (non-persistent):
        counts: (T, E) long, tokens routed to each expert (a token counts once for
            each of its k experts), since the last reset.
        prob_mass: (T, E) float64, summed router probabilities.
        tokens: (T,) long, tokens routed.
        running_share: (T, E) float64, for each task, the moving average of its
            training forwards' ``counts / counts.sum()``:
            ``r <- momentum * r + (1 - momentum) * share``, starting from 0 (read it
            through :func:`usage_share`, which undoes the start's scale).

    Args:
        num_tasks (int): T.
        num_experts (int): E.
        momentum (float): Weight of the old running share. Defaults to 0.95, the
            authors' (their EMA of counts, shown as a share: the same share when
            the forwards of a task hold the same number of tokens).
    """

    def __init__(self, num_tasks: int, num_experts: int,
                 momentum: float = RUNNING_MOMENTUM):
        super().__init__()
        if not 0. <= momentum < 1.:
            raise ValueError(f'momentum must be in [0, 1), got {momentum}.')
        self.momentum = momentum
        self.register_buffer(
            'counts', torch.zeros(num_tasks, num_experts, dtype=torch.long),
            persistent=False)
        self.register_buffer(
            'prob_mass', torch.zeros(num_tasks, num_experts, dtype=torch.float64),
            persistent=False)
        self.register_buffer(
            'tokens', torch.zeros(num_tasks, dtype=torch.long), persistent=False)
        self.register_buffer(
            'running_share',
            torch.zeros(num_tasks, num_experts, dtype=torch.float64),
            persistent=False)

    def update(self, task_index: int, route: RouterOutput,
               counts: torch.Tensor) -> None:
        """Add the routing of N tokens of task ``task_index``; ``counts`` (E,) are its
        slots per expert (:attr:`~.dispatch.TokenDispatch.counts`). A forward with
        autograd on (a training step) also moves the task's running share."""
        training_step = torch.is_grad_enabled()
        with torch.no_grad():
            self.counts[task_index] += counts
            self.prob_mass[task_index] += route.probs.sum(dim=0).to(torch.float64)
            self.tokens[task_index] += route.probs.shape[0]
            if training_step:
                share = counts.to(torch.float64) / counts.sum().clamp_min(1)
                self.running_share[task_index].mul_(self.momentum).add_(
                    share, alpha=1. - self.momentum)

    def reset(self, running: bool = True) -> None:
        """Zero the cumulative statistics, and the running share unless
        ``running=False``."""
        for name in FIELDS if running else CUMULATIVE_FIELDS:
            getattr(self, name).zero_()

    def all_reduce(self) -> None:
        """Sum the cumulative statistics over ranks and average the running share
        (no-op unless torch.distributed is up)."""
        if dist.is_available() and dist.is_initialized():
            for name in CUMULATIVE_FIELDS:
                dist.all_reduce(getattr(self, name))
            dist.all_reduce(self.running_share)
            self.running_share /= dist.get_world_size()


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
        field (str): ``'counts'`` or ``'prob_mass'`` (cumulative), or
            ``'running_share'`` (running).

    Returns:
        tuple: Layer names and the (L, T, E_max) stack; layers with fewer experts
        (e.g. MoA next to MoE MLPs) are zero-padded to E_max.
    """
    if field not in STATISTICS:
        raise ValueError(f'field must be one of {STATISTICS}, got {field!r}.')
    modules = expert_usage_modules(model)
    if not modules:
        return [], torch.zeros(0, 0, 0)
    stats = [getattr(m, field) for m in modules.values()]
    num_experts = max(s.shape[-1] for s in stats)
    stack = torch.stack([F.pad(s, (0, num_experts - s.shape[-1])) for s in stats])
    return list(modules), stack


def reset_expert_usage(model: nn.Module, running: bool = True) -> None:
    """:meth:`ExpertUsage.reset` of every MoE layer of ``model``."""
    for module in expert_usage_modules(model).values():
        module.reset(running)


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


def experts_to_cover(stat: torch.Tensor, mass: float = 0.9) -> torch.Tensor:
    """(..., E) counts or mass -> the fewest experts whose shares sum to at least
    ``mass`` of the total, shape (...) long (0 for a row of zeros)."""
    if not 0. < mass <= 1.:
        raise ValueError(f'mass must be in (0, 1], got {mass}.')
    share = usage_share(stat).sort(dim=-1, descending=True).values
    # a small tolerance, so that e.g. shares 0.5 + 0.4 reach 0.9 despite rounding
    reached = share.cumsum(dim=-1) >= mass - 1e-9
    covered = reached.any(dim=-1)
    return torch.where(covered, reached.long().argmax(dim=-1) + 1, 0)
