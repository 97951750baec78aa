"""Task routers: one top-k router per task, each in its own parameters.

A layer keeps its routers in parameter dicts keyed by task name (``weight.<task>``
(D, E)), as the Mod-Squad code keeps one gate module per task. The routers of the
tasks absent from an iteration get no gradient (``None``), so optimisers such as AdamW
leave them exactly as they are (no momentum or weight-decay drift), a checkpoint's
routers load by task name, and under DDP ``find_unused_parameters=True`` is needed (as
for the per-task heads anyway).
"""
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

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


def check_task_names(task_names: Sequence[str]) -> Tuple[str, ...]:
    """``task_names`` as a tuple; ValueError unless they are unique, non-empty
    names without dots (they key per-task parameters)."""
    if (len(task_names) == 0 or len(set(task_names)) != len(task_names)
            or any(not t or '.' in t for t in task_names)):
        raise ValueError(f'task_names must be unique, non-empty names without '
                         f'dots, got {list(task_names)}.')
    return tuple(task_names)


class TaskRouter(nn.Module):
    """Per-task top-k router, linear or a 2-layer MLP (``C -> hidden -> E``, ReLU).

    Parameter dicts keyed by task, D = ``hidden_features or in_features``: ``weight``
    (D, E), ``bias`` (E,); with ``hidden_features``, ``hidden_weight`` (C, D) and
    ``hidden_bias`` (D,); with noisy gating, ``noise_weight`` (D, E).

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
        self.task_names = check_task_names(task_names)
        self._task_to_index: Dict[str, int] = {
            name: i for i, name in enumerate(self.task_names)}
        self.num_experts = num_experts
        self.top_k = top_k
        self.renormalize = renormalize
        self.zero_init = zero_init
        dims = hidden_features or in_features

        def per_task(*shape: int) -> nn.ParameterDict:
            return nn.ParameterDict(
                {t: nn.Parameter(torch.empty(*shape)) for t in self.task_names})

        self.hidden_weight = per_task(in_features, dims) if hidden_features else None
        self.hidden_bias = per_task(dims) if hidden_features else None
        self.weight = per_task(dims, num_experts)
        self.bias = per_task(num_experts)
        self.noise_weight = per_task(dims, num_experts) if noisy_gating else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Hidden layer: truncated normal; output (and noise) layer: zeros or normal."""
        for task in self.task_names:
            if self.hidden_weight is not None:
                nn.init.trunc_normal_(self.hidden_weight[task], std=INIT_STD)
                nn.init.zeros_(self.hidden_bias[task])
            for weights in (self.weight, self.noise_weight):
                if weights is None:
                    continue
                if self.zero_init:
                    nn.init.zeros_(weights[task])
                else:
                    nn.init.trunc_normal_(weights[task], std=INIT_STD)
            nn.init.zeros_(self.bias[task])

    @property
    def noisy_gating(self) -> bool:
        return self.noise_weight is not None

    def task_index(self, task: str) -> int:
        """Position of ``task`` in :attr:`task_names` (its row in per-task statistics)."""
        try:
            return self._task_to_index[task]
        except KeyError:
            raise ValueError(f'Unknown task {task!r}; valid tasks are '
                             f'{list(self.task_names)}.') from None

    def forward(self, x: torch.Tensor, task: str) -> RouterOutput:
        """x: (N, C) tokens, any dtype; returns the fp32 :class:`RouterOutput`."""
        self.task_index(task)  # a clear error for an unknown task
        # Routing in fp32 on purpose, even under autocast: bf16 logits would tie and
        # flip the top-k choices, and the softmax feeds the auxiliary losses.
        with torch.autocast(x.device.type, enabled=False):
            h = x.float()
            if self.hidden_weight is not None:
                h = F.relu(torch.addmm(self.hidden_bias[task].float(), h,
                                       self.hidden_weight[task].float()))
            logits = torch.addmm(self.bias[task].float(), h, self.weight[task].float())
            if self.noise_weight is not None and self.training:
                noise_std = F.softplus(h @ self.noise_weight[task].float()) + NOISE_EPS
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
