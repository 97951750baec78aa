"""Auxiliary losses of task-routed mixtures of experts.

Every MoE layer built with an enabled :class:`MoEAuxLossConfig` owns a
:class:`RouterAuxLoss`. In training forwards (with grad enabled) it accumulates what
its losses need: per-task router probability mass (with grad), per-expert token counts,
squared log-sum-exp of the logits. :func:`collect_aux_losses` then computes every
layer's weighted losses, sums them per kind over the layers and clears the state.
Call it once per training forward pass (after the forwards of all tasks of the step in
the Mod-Squad batch form); the accumulated tensors hold the autograd graph until then.

Losses (per layer, then summed over layers):

- mutual information (Mod-Squad), with P(t, e) the joint of task and expert:
  ``L_MI = -sum_{t,e} P(t,e) log(P(t,e) / (P(t) P(e)))``.
  ``mi_form='batch'``: P(t, e) = router probability mass of the tokens of task t on
  expert e / all tokens since the last collection (all tasks in one step).
  ``mi_form='heterogeneous'``: one task per iteration; P(t, e) = p(e | t) / T with
  P(t) uniform; the row of each task of this iteration is its batch estimate (the only
  rows with gradient), the other rows are running averages. A persistent buffer keeps
  the running p(e | t): a cumulative mean during ``warmup_iters`` collections (loss 0
  then), an exponential moving average with ``momentum`` afterwards.
- switch load balancing: ``E * sum_e f_e P_e``, f_e the share of routed slots and P_e
  the share of probability mass of expert e (pooled over tasks).
- router z-loss: mean over tokens of ``logsumexp(logits) ** 2``.
"""
from dataclasses import dataclass
from typing import Dict

import torch
import torch.nn as nn

from .router import RouterOutput

MI_FORMS = ('batch', 'heterogeneous')
TINY = 1e-12


@dataclass
class MoEAuxLossConfig:
    """Weights (per layer; 0 turns a loss off) and options of the auxiliary losses.

    Args:
        mi_weight (float): Mutual-information loss. Mod-Squad: 0.005 (batch form);
            about 0.0005 for the heterogeneous form.
        mi_form (str): ``'heterogeneous'`` (one task per iteration) or ``'batch'``.
        momentum (float): Running-average momentum of the heterogeneous form.
        warmup_iters (int): Heterogeneous form: collections that only fill the running
            average (cumulative mean, loss 0) before the loss starts.
        switch_weight (float): Switch-Transformer load-balancing loss.
        z_weight (float): Router z-loss.
    """
    mi_weight: float = 0.
    mi_form: str = 'heterogeneous'
    momentum: float = 0.99
    warmup_iters: int = 100
    switch_weight: float = 0.
    z_weight: float = 0.

    def __post_init__(self):
        if self.mi_form not in MI_FORMS:
            raise ValueError(f'mi_form must be one of {MI_FORMS}, got {self.mi_form!r}.')
        if not 0. <= self.momentum < 1.:
            raise ValueError(f'momentum must be in [0, 1), got {self.momentum}.')
        if self.warmup_iters < 0:
            raise ValueError(f'warmup_iters must be >= 0, got {self.warmup_iters}.')

    @property
    def enabled(self) -> bool:
        return self.mi_weight > 0 or self.switch_weight > 0 or self.z_weight > 0


def mutual_information_loss(joint: torch.Tensor) -> torch.Tensor:
    """``-sum P(t,e) log(P(t,e) / (P(t) P(e)))`` of a joint (T, E); zero rows add 0."""
    p_task = joint.sum(dim=1, keepdim=True)
    p_expert = joint.sum(dim=0, keepdim=True)
    ratio = joint.clamp_min(TINY) / (p_task * p_expert).clamp_min(TINY)
    return -(joint * ratio.log()).sum()


def switch_loss(counts: torch.Tensor, prob_mass: torch.Tensor) -> torch.Tensor:
    """``E * sum_e f_e P_e`` from (E,) routed slot counts and probability mass."""
    f = counts.float() / counts.sum().clamp_min(1)
    p = prob_mass / prob_mass.sum().clamp_min(TINY)
    return counts.numel() * (f * p).sum()


class RouterAuxLoss(nn.Module):
    """Accumulates one MoE layer's auxiliary-loss inputs and computes its losses.

    Buffers (persistent, heterogeneous MI only): ``mi_running (T, E)`` running
    p(e | t), ``mi_row_updates (T,)`` updates per row, ``mi_iter ()`` collections.

    Args:
        cfg (MoEAuxLossConfig): Weights and options.
        num_tasks (int): T.
        num_experts (int): E.
    """

    def __init__(self, cfg: MoEAuxLossConfig, num_tasks: int, num_experts: int):
        super().__init__()
        self.cfg = cfg
        self.num_tasks = num_tasks
        self.num_experts = num_experts
        if cfg.mi_weight > 0 and cfg.mi_form == 'heterogeneous':
            self.register_buffer('mi_running', torch.zeros(num_tasks, num_experts))
            self.register_buffer('mi_row_updates',
                                 torch.zeros(num_tasks, dtype=torch.long))
            self.register_buffer('mi_iter', torch.zeros((), dtype=torch.long))
        self.reset()

    def reset(self) -> None:
        """Drop the accumulated state (and its graph)."""
        self._prob_mass: Dict[int, torch.Tensor] = {}  # task -> (E,) with grad
        self._tokens: Dict[int, int] = {}
        self._counts = 0  # (E,) routed slots, all tasks
        self._z_sum = 0
        self._z_tokens = 0

    def update(self, task_index: int, route: RouterOutput, record: bool = True) -> None:
        """Accumulate the routing of N tokens of task ``task_index``.

        ``record=False`` builds the same graph but keeps nothing: activation
        checkpointing's recomputation must save the same tensors as the forward.
        """
        cfg = self.cfg
        prob_mass = route.probs.sum(dim=0)
        if cfg.z_weight > 0:
            z_sum = route.logits.logsumexp(dim=-1).square().sum()
        if not record:
            return
        num_tokens = route.probs.shape[0]
        self._tokens[task_index] = self._tokens.get(task_index, 0) + num_tokens
        if cfg.mi_weight > 0 or cfg.switch_weight > 0:
            self._prob_mass[task_index] = self._prob_mass.get(task_index, 0) + prob_mass
        if cfg.switch_weight > 0:
            flat = route.indices.reshape(-1)
            self._counts = self._counts + torch.zeros_like(
                prob_mass, dtype=torch.long).scatter_add_(0, flat, torch.ones_like(flat))
        if cfg.z_weight > 0:
            self._z_sum = self._z_sum + z_sum
            self._z_tokens += num_tokens

    def compute(self) -> Dict[str, torch.Tensor]:
        """Weighted losses by kind (``'mi'``, ``'switch'``, ``'z'``) of the accumulated
        forwards, empty if there were none; clears the state."""
        cfg = self.cfg
        losses = {}
        if not self._tokens:
            return losses
        if cfg.mi_weight > 0:
            mi = self._batch_mi() if cfg.mi_form == 'batch' else self._heterogeneous_mi()
            losses['mi'] = cfg.mi_weight * mi
        if cfg.switch_weight > 0:
            prob_mass = sum(self._prob_mass.values())
            losses['switch'] = cfg.switch_weight * switch_loss(self._counts, prob_mass)
        if cfg.z_weight > 0:
            losses['z'] = cfg.z_weight * self._z_sum / self._z_tokens
        self.reset()
        return losses

    def _batch_mi(self) -> torch.Tensor:
        tasks = sorted(self._prob_mass)
        joint = torch.stack([self._prob_mass[t] for t in tasks])
        return mutual_information_loss(joint / sum(self._tokens.values()))

    def _heterogeneous_mi(self) -> torch.Tensor:
        running = self.mi_running
        rows = list(running.unbind(0))
        in_warmup = self.mi_iter < self.cfg.warmup_iters
        for t, mass in self._prob_mass.items():
            rows[t] = mass / self._tokens[t]  # batch estimate of p(e | t), with grad
            with torch.no_grad():
                n = self.mi_row_updates[t].to(running.dtype)
                momentum = torch.where(in_warmup, n / (n + 1),
                                       torch.full_like(n, self.cfg.momentum))
                running[t] = momentum * running[t] + (1 - momentum) * rows[t]
                self.mi_row_updates[t] += 1
        self.mi_iter += 1
        mi = mutual_information_loss(torch.stack(rows) / self.num_tasks)
        return mi * (~in_warmup).to(mi.dtype)


def collect_aux_losses(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Weighted auxiliary losses of every MoE layer of ``model``, summed per kind over
    the layers, as ``loss_moe_mi``, ``loss_moe_switch``, ``loss_moe_z`` (only the kinds
    with a positive weight and accumulated forwards); clears the accumulated state."""
    totals: Dict[str, torch.Tensor] = {}
    for module in model.modules():
        if isinstance(module, RouterAuxLoss):
            for kind, loss in module.compute().items():
                key = f'loss_moe_{kind}'
                totals[key] = totals[key] + loss if key in totals else loss
    return totals
