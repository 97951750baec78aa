"""Grow a routed layer for a new task without changing what its old tasks compute.

Continual learning (Mod-Squad): a layer of E experts gets M new ones, appended after
the old (ids E to E + M - 1), and a router for the new task that chooses among all
E + M; the old tasks' routers stay E wide (:func:`narrow_router`), so they keep
choosing among exactly their experts with the same arithmetic, and their outputs
stay bit-identical (a router masked to E of E + M columns would differ by rounding).

- :func:`narrow_router`: a task's router restricted to the first experts.
- :func:`most_used_experts`: the experts a new one is copied from.
- :func:`grow_layer_state`: a layer's state dict of E experts (a checkpoint's) ->
  the grown layer's, new rows fresh (the layer's own initialisation) or copies.
"""
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn

from .partial import expert_stacks
from .routed_layer import RoutedLayer

#: Router tensors with one output per expert (the last axis), per task.
ROUTER_OUTPUTS = ('weight', 'bias', 'noise_weight')
#: Auxiliary-loss buffers: (T, E) running p(e | t) and (T,) updates per task.
AUX_BUFFERS = ('mi_running', 'mi_row_updates')


def narrow_router(router: nn.Module, task: str, num_experts: int) -> None:
    """Let ``task``'s router of a :class:`~.router.TaskRouter` choose among experts
    0 to ``num_experts - 1`` only: its output layer keeps its first ``num_experts``
    columns, ``(D, E) -> (D, num_experts)`` (new Parameters)."""
    width = router.num_experts_of(task)
    if not router.top_k_of(task) <= num_experts <= width:
        raise ValueError(f'Router of task {task!r}: cannot narrow {width} experts to '
                         f'{num_experts} (k = {router.top_k_of(task)}).')
    for name in ROUTER_OUTPUTS:
        params = getattr(router, name)
        if params is not None:
            params[task] = nn.Parameter(params[task].detach()[..., :num_experts].clone(),
                                        requires_grad=params[task].requires_grad)


def most_used_experts(usage: torch.Tensor, num: int) -> torch.Tensor:
    """(E,) usage -> the ``num`` most used expert ids (ties: the lower id first),
    most used first."""
    if not 0 < num <= usage.numel():
        raise ValueError(f'Cannot copy {num} experts: the layer has {usage.numel()} '
                         f'to copy from.')
    if not usage.sum() > 0:
        raise ValueError('The usage to copy experts by is all zero: no tokens of the '
                         'task were routed through the layer.')
    return usage.sort(descending=True, stable=True).indices[:num]


def grow_layer_state(state: Dict[str, torch.Tensor], layer: RoutedLayer,
                     old_tasks: Sequence[str],
                     copy_ids: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """The state dict of ``layer`` (E + M experts) from one of E experts.

    Args:
        state (dict): The layer's tensors of E experts, keys relative to the layer
            (``experts.w1``, ``q_proj``, ``router.weight.<task>``, ...).
        layer (RoutedLayer): The grown layer; its current values of the new rows
            are the fresh initialisation.
        old_tasks (Sequence[str]): The tasks of ``state``, in its (statistics) order.
        copy_ids (Tensor, optional): (M,) old experts the new ones copy, in order;
            None: the new rows keep ``layer``'s initialisation.

    Returns:
        dict: A copy of ``state`` with the stacks ``(E + M, ...)`` and the
        auxiliary-loss buffers grown to ``(T, E + M)`` (the old tasks' rows by name,
        the new task's zero) where ``layer`` has them too; other tensors unchanged
        (a layer without the loss leaves them unexpected keys, as loading them into
        an ungrown layer without it does).
    """
    own = layer.state_dict()
    out = dict(state)
    for module, name in expert_stacks(layer):
        key = next(k for k, m in layer.named_modules() if m is module)
        key = f'{key}.{name}' if key else name
        old = state[key]
        new_rows = (old.index_select(0, copy_ids) if copy_ids is not None else
                    own[key][old.shape[0]:].to(old))
        if old.shape[0] + new_rows.shape[0] != own[key].shape[0]:
            raise ValueError(f'{key}: {old.shape[0]} experts + {new_rows.shape[0]} new '
                             f'!= the layer\'s {own[key].shape[0]}.')
        out[key] = torch.cat([old, new_rows])
    rows = [layer.task_names.index(task) for task in old_tasks]
    for name in AUX_BUFFERS:
        key = f'aux_loss.{name}'
        if key in state and key in own:
            grown = torch.zeros_like(own[key])
            old = state[key]
            if grown.dim() == 2:
                grown[rows, :old.shape[1]] = old.to(grown)
            else:
                grown[rows] = old.to(grown)
            out[key] = grown
    return out
