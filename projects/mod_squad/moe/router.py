"""Task routers: one top-k router per task, stacked in single parameters.

The routers of all tasks live in one tensor per layer (``weight (T, D, E)``), indexed by
the task of the forward. Every parameter therefore takes part in every iteration, and
DDP needs no ``find_unused_parameters``.
"""
from typing import Dict, NamedTuple, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

GATE_EPS = 1e-4  # added to the chosen probabilities, as in the authors' code
NOISE_EPS = 1e-2  # floor of the noise std of noisy gating (Shazeer et al., 2017)
INIT_STD = 0.02


class RouterOutput(NamedTuple):
    """Routing of N tokens over E experts, all fp32.

    Attributes:
        probs: (N, E) softmax over the experts.
        indices: (N, k) chosen experts, most probable first; ties go to the lower index.
        gates: (N, k) weights of the chosen experts: their probabilities + ``GATE_EPS``,
            or renormalised to sum to 1 over the k.
        logits: (N, E) scores before the softmax (noisy in training with noisy gating).
    """
    probs: torch.Tensor
    indices: torch.Tensor
    gates: torch.Tensor
    logits: torch.Tensor


class TaskRouter(nn.Module):
    """Per-task top-k router, linear or a 2-layer MLP (``C -> hidden -> E``, ReLU).

    Parameters, T = number of tasks, D = ``hidden_features or in_features``:
    ``weight (T, D, E)``, ``bias (T, E)``; with ``hidden_features``, ``hidden_weight
    (T, C, D)`` and ``hidden_bias (T, D)``; with noisy gating, ``noise_weight (T, D, E)``.

    Args:
        in_features (int): Token width C.
        num_experts (int): Experts E to choose from.
        top_k (int): Experts k per token.
        task_names (Sequence[str]): One router per task, in this order.
        hidden_features (int, optional): Hidden width of an MLP router; None for linear.
        noisy_gating (bool): In training, add Gaussian noise of learned std
            (``softplus(h @ noise_weight) + 1e-2``) to the logits.
        renormalize (bool): Gates renormalised over the top-k instead of the
            probabilities + 1e-4 (Mod-Squad).
        zero_init (bool): Zero output layer (all experts equally likely at start, as in
            Mod-Squad); else truncated normal, std 0.02.
    """

    def __init__(self,
                 in_features: int,
                 num_experts: int,
                 top_k: int,
                 task_names: Sequence[str],
                 hidden_features: Optional[int] = None,
                 noisy_gating: bool = False,
                 renormalize: bool = False,
                 zero_init: bool = True):
        super().__init__()
        if not 0 < top_k <= num_experts:
            raise ValueError(f'top_k must be in [1, num_experts={num_experts}], '
                             f'got {top_k}.')
        if len(task_names) == 0 or len(set(task_names)) != len(task_names):
            raise ValueError(f'task_names must be unique and non-empty, got '
                             f'{list(task_names)}.')
        self.task_names = tuple(task_names)
        self._task_to_index: Dict[str, int] = {
            name: i for i, name in enumerate(self.task_names)}
        self.num_experts = num_experts
        self.top_k = top_k
        self.renormalize = renormalize
        self.zero_init = zero_init
        num_tasks = len(task_names)
        dims = hidden_features or in_features
        if hidden_features:
            self.hidden_weight = nn.Parameter(
                torch.empty(num_tasks, in_features, hidden_features))
            self.hidden_bias = nn.Parameter(torch.empty(num_tasks, hidden_features))
        else:
            self.register_parameter('hidden_weight', None)
            self.register_parameter('hidden_bias', None)
        self.weight = nn.Parameter(torch.empty(num_tasks, dims, num_experts))
        self.bias = nn.Parameter(torch.empty(num_tasks, num_experts))
        if noisy_gating:
            self.noise_weight = nn.Parameter(torch.empty(num_tasks, dims, num_experts))
        else:
            self.register_parameter('noise_weight', None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Hidden layer: truncated normal; output (and noise) layer: zeros or normal."""
        if self.hidden_weight is not None:
            nn.init.trunc_normal_(self.hidden_weight, std=INIT_STD)
            nn.init.zeros_(self.hidden_bias)
        for weight in (self.weight, self.noise_weight):
            if weight is None:
                continue
            if self.zero_init:
                nn.init.zeros_(weight)
            else:
                nn.init.trunc_normal_(weight, std=INIT_STD)
        nn.init.zeros_(self.bias)

    @property
    def noisy_gating(self) -> bool:
        return self.noise_weight is not None

    def task_index(self, task: str) -> int:
        """Row of ``task`` in the stacked router parameters."""
        try:
            return self._task_to_index[task]
        except KeyError:
            raise ValueError(f'Unknown task {task!r}; valid tasks are '
                             f'{list(self.task_names)}.') from None

    def forward(self, x: torch.Tensor, task: str) -> RouterOutput:
        """x: (N, C) tokens, any dtype; returns the fp32 :class:`RouterOutput`."""
        t = self.task_index(task)
        # Routing in fp32 on purpose, even under autocast: bf16 logits would tie and
        # flip the top-k choices, and the softmax feeds the auxiliary losses.
        with torch.autocast(x.device.type, enabled=False):
            h = x.float()
            if self.hidden_weight is not None:
                h = F.relu(torch.addmm(self.hidden_bias[t].float(), h,
                                       self.hidden_weight[t].float()))
            logits = torch.addmm(self.bias[t].float(), h, self.weight[t].float())
            if self.noise_weight is not None and self.training:
                noise_std = F.softplus(h @ self.noise_weight[t].float()) + NOISE_EPS
                logits = logits + torch.randn_like(logits) * noise_std
            probs = logits.softmax(dim=-1)
            # A stable sort (not topk) so that ties, e.g. every expert equally likely
            # after zero initialisation, deterministically go to the lower index.
            top_probs, indices = probs.sort(dim=-1, descending=True, stable=True)
            top_probs, indices = top_probs[:, :self.top_k], indices[:, :self.top_k]
            if self.renormalize:
                gates = top_probs / top_probs.sum(dim=-1, keepdim=True)
            else:
                gates = top_probs + GATE_EPS
        return RouterOutput(probs, indices, gates, logits)

    def extra_repr(self) -> str:
        return (f'tasks={list(self.task_names)}, num_experts={self.num_experts}, '
                f'top_k={self.top_k}, hidden={self.hidden_weight is not None}, '
                f'noisy_gating={self.noisy_gating}, renormalize={self.renormalize}')
