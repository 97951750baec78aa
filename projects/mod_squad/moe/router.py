"""Task routers: one top-k router per task, each in its own parameters.

Compute control: each task's router also has its own k (by default the built
``top_k``) and set of enabled experts, changeable on a built model
(:meth:`TaskRouter.set_compute`) without retraining. Disabled experts get the logit
``-inf``: the softmax renormalises over the enabled ones and they are never chosen.
A lower k gives the dispatch N * k slots, so the experts really compute less.

A layer keeps its routers in parameter dicts keyed by task name (``weight.<task>``
(D, E)), as the Mod-Squad code keeps one gate module per task. A task's router may be
narrower, ``(D, E_t)`` with E_t < E (:meth:`TaskRouter.num_experts_of`, set by
:func:`~.growth.narrow_router`): it chooses among the first E_t experts only, with the
same arithmetic as a router of E_t experts (so a layer grown by new experts for a new
task computes its old tasks bit-identically); its probabilities and logits are padded
to E with 0 and ``-inf``. The routers of the
tasks absent from an iteration get no gradient (``None``), so optimisers such as AdamW
leave them exactly as they are (no momentum or weight-decay drift), a checkpoint's
routers load by task name, and under DDP ``find_unused_parameters=True`` is needed (as
for the per-task heads anyway).
"""
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import RouterConfig

NOISE_EPS = 1e-2  # floor of the noise std of noisy gating (Shazeer et al., 2017)
INIT_STD = 0.02


class RouterOutput(NamedTuple):
    """Routing of N tokens over E experts, all fp32.

    Attributes:
        probs: (N, E) softmax over the (enabled) experts; 0 for disabled ones (and
            those beyond a narrowed router's E_t).
        indices: (N, k) chosen experts, most probable first; ties go to the lower
            index; k is the task's effective top-k (:meth:`TaskRouter.top_k_of`).
        gates: (N, k) weights of the chosen experts: their probabilities +
            ``RouterConfig.eps``, or renormalised to sum to 1 over the k.
        logits: (N, E) scores before the softmax (noisy in training with noisy
            gating; ``-inf`` for disabled experts).
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

    Parameter dicts keyed by task, D = ``cfg.hidden or in_features``: ``weight``
    (D, E) and, with ``cfg.bias``, ``bias`` (E,); with ``cfg.hidden``,
    ``hidden_weight`` (C, D) (and ``hidden_bias`` (D,)); with noisy gating,
    ``noise_weight`` (D, E).

    Per-task compute (:meth:`set_compute`, read by :meth:`top_k_of` and
    :meth:`enabled_experts_of`): by default every expert is enabled and k is
    ``top_k``. The settings are not saved in checkpoints (``enabled_mask`` is a
    non-persistent buffer) and apply in training and evaluation alike.

    Args:
        in_features (int): Token width C.
        num_experts (int): Experts E to choose from.
        top_k (int): Experts k per token (each task's default, see
            :meth:`set_compute`).
        task_names (Sequence[str]): One router per task, in this order.
        cfg (RouterConfig, optional): Hidden width, noisy gating, gates, init, bias
            and gate epsilon. Defaults to ``RouterConfig()``.
    """

    def __init__(self,
                 in_features: int,
                 num_experts: int,
                 top_k: int,
                 task_names: Sequence[str],
                 cfg: Optional[RouterConfig] = None):
        super().__init__()
        if not 0 < top_k <= num_experts:
            raise ValueError(f'top_k must be in [1, num_experts={num_experts}], '
                             f'got {top_k}.')
        self.task_names = check_task_names(task_names)
        self._task_to_index: Dict[str, int] = {
            name: i for i, name in enumerate(self.task_names)}
        self.num_experts = num_experts
        self.top_k = top_k
        self.cfg = cfg = cfg or RouterConfig()
        dims = cfg.hidden or in_features

        def per_task(*shape: int, when: bool = True) -> Optional[nn.ParameterDict]:
            if not when:
                return None
            return nn.ParameterDict(
                {t: nn.Parameter(torch.empty(*shape)) for t in self.task_names})

        hidden = cfg.hidden is not None
        self.hidden_weight = per_task(in_features, dims, when=hidden)
        self.hidden_bias = per_task(dims, when=hidden and cfg.bias)
        self.weight = per_task(dims, num_experts)
        self.bias = per_task(num_experts, when=cfg.bias)
        self.noise_weight = per_task(dims, num_experts, when=cfg.noisy_gating)
        # Compute control: k on the host (it shapes the dispatch), the enabled set
        # both on the host (readers, no sync) and as a (T, E) mask on the device.
        self._top_k: Dict[str, int] = dict.fromkeys(self.task_names, top_k)
        self._enabled: Dict[str, Optional[List[int]]] = dict.fromkeys(self.task_names)
        self.register_buffer(
            'enabled_mask', torch.ones(len(self.task_names), num_experts,
                                       dtype=torch.bool), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Hidden layer: truncated normal; output (and noise) layer: zeros or
        truncated normal (``cfg.init``); biases: zeros."""
        for task in self.task_names:
            if self.hidden_weight is not None:
                nn.init.trunc_normal_(self.hidden_weight[task], std=INIT_STD)
            for weights in (self.weight, self.noise_weight):
                if weights is None:
                    continue
                if self.cfg.init == 'zeros':
                    nn.init.zeros_(weights[task])
                else:
                    nn.init.trunc_normal_(weights[task], std=INIT_STD)
            for biases in (self.hidden_bias, self.bias):
                if biases is not None:
                    nn.init.zeros_(biases[task])

    def num_experts_of(self, task: str) -> int:
        """E_t: ``task``'s router chooses among experts 0 to E_t - 1."""
        self.task_index(task)
        return self.weight[task].shape[-1]

    def task_index(self, task: str) -> int:
        """Position of ``task`` in :attr:`task_names` (its row in per-task statistics)."""
        try:
            return self._task_to_index[task]
        except KeyError:
            raise ValueError(f'Unknown task {task!r}; valid tasks are '
                             f'{list(self.task_names)}.') from None

    # --- compute control --------------------------------------------------------
    def top_k_of(self, task: str) -> int:
        """Experts per token that ``task``'s tokens are routed to."""
        self.task_index(task)
        return self._top_k[task]

    def enabled_experts_of(self, task: str) -> List[int]:
        """Sorted ids of the experts ``task``'s router may choose."""
        self.task_index(task)
        enabled = self._enabled[task]
        return list(range(self.num_experts_of(task))) if enabled is None else list(enabled)

    def set_compute(self,
                    task: str,
                    top_k: Optional[int] = None,
                    enabled_experts: Optional[Sequence[int]] = None) -> None:
        """Set ``task``'s experts per token and the experts it may choose.

        Args:
            task (str): Whose router.
            top_k (int, optional): k in [1, E_t], at most the number of enabled
                experts. None: the built ``top_k``, capped at the number of enabled
                experts.
            enabled_experts (Sequence[int], optional): Expert ids in [0, E_t).
                None: all E_t experts.
        """
        t = self.task_index(task)
        num_experts = self.num_experts_of(task)
        enabled = None
        if enabled_experts is not None:
            enabled = sorted(set(int(e) for e in enabled_experts))
            if len(enabled) != len(enabled_experts):
                raise ValueError(f'enabled_experts of task {task!r} repeat an expert: '
                                 f'{list(enabled_experts)}.')
            outside = [e for e in enabled if not 0 <= e < num_experts]
            if outside or not enabled:
                raise ValueError(
                    f'enabled_experts of task {task!r} must be a non-empty list of '
                    f'expert ids in [0, {num_experts}), got '
                    f'{list(enabled_experts)}.')
        num_enabled = num_experts if enabled is None else len(enabled)
        if top_k is None:
            top_k = min(self.top_k, num_enabled)
        elif isinstance(top_k, bool) or not isinstance(top_k, int) or not (
                0 < top_k <= num_experts):
            raise ValueError(f'top_k of task {task!r} must be an int in [1, '
                             f'num_experts={num_experts}], got {top_k!r}.')
        elif top_k > num_enabled:
            raise ValueError(f'top_k={top_k} of task {task!r} is larger than its '
                             f'{num_enabled} enabled experts {enabled}.')
        self._top_k[task] = top_k
        # all experts enabled: the unmasked path, as a router never restricted
        self._enabled[task] = None if num_enabled == num_experts else enabled
        self.enabled_mask[t] = enabled is None
        if enabled is not None:
            self.enabled_mask[t, enabled] = True

    def forward(self, x: torch.Tensor, task: str) -> RouterOutput:
        """x: (N, C) tokens, any dtype; returns the fp32 :class:`RouterOutput` with
        k = :meth:`top_k_of` (task) experts per token."""
        t = self.task_index(task)  # a clear error for an unknown task
        top_k = self._top_k[task]
        num_experts = self.num_experts_of(task)
        mask = self.enabled_mask[t, :num_experts] if (
            self._enabled[task] is not None) else None
        # Routing in fp32 on purpose, even under autocast: bf16 logits would tie and
        # flip the top-k choices, and the softmax feeds the auxiliary losses.
        with torch.autocast(x.device.type, enabled=False):
            h = x.float()
            if self.hidden_weight is not None:
                h = F.relu(_linear(h, self.hidden_weight, self.hidden_bias, task))
            logits = _linear(h, self.weight, self.bias, task)
            if self.noise_weight is not None and self.training:
                noise_std = F.softplus(h @ self.noise_weight[task].float()) + NOISE_EPS
                logits = logits + torch.randn_like(logits) * noise_std
            if mask is not None:
                logits = logits.masked_fill(~mask, float('-inf'))
            probs = logits.softmax(dim=-1)
            # A stable sort (not topk) so that ties, e.g. every expert equally likely
            # after zero initialisation, deterministically go to the lower index.
            # Disabled experts sort below enabled ones whose probability underflows.
            # (k <= enabled experts, so the top k keys are probabilities.)
            key = probs if mask is None else probs.masked_fill(~mask, -1.)
            top_probs, indices = key.sort(dim=-1, descending=True, stable=True)
            top_probs, indices = top_probs[:, :top_k], indices[:, :top_k]
            if self.cfg.renormalize:
                gates = top_probs / top_probs.sum(dim=-1, keepdim=True)
            else:
                gates = top_probs + self.cfg.eps
            if num_experts < self.num_experts:  # a narrowed router: pad after the math
                pad = (0, self.num_experts - num_experts)
                probs = F.pad(probs, pad)
                logits = F.pad(logits, pad, value=float('-inf'))
        return RouterOutput(probs, indices, gates, logits)

    def extra_repr(self) -> str:
        cfg = self.cfg
        return (f'tasks={list(self.task_names)}, num_experts={self.num_experts}, '
                f'top_k={self.top_k}, hidden={cfg.hidden}, bias={cfg.bias}, '
                f'noisy_gating={cfg.noisy_gating}, renormalize={cfg.renormalize}, '
                f'init={cfg.init!r}{self._compute_repr()}')

    def _compute_repr(self) -> str:
        """The tasks' compute settings that differ from the defaults."""
        changed = {
            task: dict(top_k=self._top_k[task], enabled=self._enabled[task])
            for task in self.task_names
            if self._top_k[task] != self.top_k or self._enabled[task] is not None
        }
        return f', compute={changed}' if changed else ''


def _linear(x: torch.Tensor, weights: nn.ParameterDict,
            biases: Optional[nn.ParameterDict], task: str) -> torch.Tensor:
    """fp32 ``x @ weights[task] (+ biases[task])``: (N, D_in) -> (N, D_out)."""
    if biases is None:
        return x @ weights[task].float()
    return torch.addmm(biases[task].float(), x, weights[task].float())
