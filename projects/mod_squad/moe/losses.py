"""Auxiliary losses of task-routed mixtures of experts.

Every MoE layer built with an enabled :class:`MoEAuxLossConfig` owns a
:class:`RouterAuxLoss`. In training forwards (with grad enabled) it accumulates what
its losses need: per-task router probability mass (with grad), per-expert slot counts
(those of the layer's dispatch), squared log-sum-exp of the logits.
:func:`collect_aux_losses` then computes every layer's weighted losses, sums them per
kind over the layers and clears the state.
Call it once per training forward pass (after the forwards of all tasks of the step in
the Mod-Squad batch form); the accumulated tensors hold the autograd graph until then.

Losses (per layer, then summed over layers):

- mutual information (Mod-Squad), with P(t, e) the joint of task and expert:
  ``L_MI = -sum_{t,e} P(t,e) log(P(t,e) / (P(t) P(e)))``; as in the authors' code,
  ``eps`` is added to every router probability, to the token counts that normalise
  P(t, e), to P(t) and P(e) and inside the log.
  ``mi_form='batch'``: P(t, e) = router probability mass of the tokens of task t on
  expert e / all tokens since the last collection (all tasks in one step).
  ``mi_form='heterogeneous'``: one task per iteration; P(t, e) = p(e | t) / T with
  P(t) uniform; the row of each task of this iteration is its batch estimate (the only
  rows with gradient), the other rows are running averages. A persistent buffer keeps
  the running p(e | t): a cumulative mean during ``warmup_iters`` collections (loss 0
  then), an exponential moving average with ``momentum`` afterwards.
- switch load balancing: ``E * sum_e f_e P_e``, f_e the share of routed slots and P_e
  the share of probability mass of expert e (pooled over tasks).
- router z-loss: mean over tokens of ``log(sum_e exp(logits) + eps) ** 2``.
"""
import math
from typing import Dict

import torch
import torch.nn as nn

from .config import MoEAuxLossConfig
from .router import RouterOutput

TINY = 1e-12


def mutual_information_loss(joint: torch.Tensor, eps: float = 0.) -> torch.Tensor:
    """``-sum P(t,e) log(P(t,e) / (P(t) P(e)) + eps)`` of a joint (T, E), with
    ``eps`` also added to the marginals P(t) and P(e); zero rows add 0."""
    p_task = joint.sum(dim=1, keepdim=True) + eps
    p_expert = joint.sum(dim=0, keepdim=True) + eps
    ratio = joint / (p_task * p_expert).clamp_min(TINY) + eps
    return -(joint * ratio.clamp_min(TINY).log()).sum()


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

    def update(self, task_index: int, route: RouterOutput, counts: torch.Tensor,
               record: bool = True) -> None:
        """Accumulate the routing of N tokens of task ``task_index``; ``counts`` (E,)
        are its slots per expert (:attr:`~.dispatch.TokenDispatch.counts`).

        ``record=False`` builds the same graph but keeps nothing: activation
        checkpointing's recomputation must save the same tensors as the forward.
        """
        cfg = self.cfg
        num_tokens = route.probs.shape[0]
        prob_mass = route.probs.sum(dim=0) + cfg.eps * num_tokens
        if cfg.z_weight > 0:
            lse = route.logits.logsumexp(dim=-1)
            if cfg.eps > 0:  # log(sum_e exp(logit_e) + eps), overflow-free
                lse = torch.logaddexp(lse, lse.new_tensor(math.log(cfg.eps)))
            z_sum = lse.square().sum()
        if not record:
            return
        self._tokens[task_index] = self._tokens.get(task_index, 0) + num_tokens
        if cfg.mi_weight > 0 or cfg.switch_weight > 0:
            self._prob_mass[task_index] = self._prob_mass.get(task_index, 0) + prob_mass
        if cfg.switch_weight > 0:
            self._counts = self._counts + counts
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
        return mutual_information_loss(
            joint / (sum(self._tokens.values()) + self.cfg.eps), self.cfg.eps)

    def _heterogeneous_mi(self) -> torch.Tensor:
        running = self.mi_running
        rows = list(running.unbind(0))
        in_warmup = self.mi_iter < self.cfg.warmup_iters
        for t, mass in self._prob_mass.items():
            # batch estimate of p(e | t), with grad
            rows[t] = mass / (self._tokens[t] + self.cfg.eps)
            with torch.no_grad():
                n = self.mi_row_updates[t].to(running.dtype)
                momentum = torch.where(in_warmup, n / (n + 1),
                                       torch.full_like(n, self.cfg.momentum))
                running[t] = momentum * running[t] + (1 - momentum) * rows[t]
                self.mi_row_updates[t] += 1
        self.mi_iter += 1
        mi = mutual_information_loss(torch.stack(rows) / self.num_tasks, self.cfg.eps)
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
