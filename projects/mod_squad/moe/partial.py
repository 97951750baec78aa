"""Train some experts of a routed layer and freeze the others.

``requires_grad`` is per tensor, so a stacked ``(E, ...)`` expert tensor whose experts
{3, 7} train is split in two parameters: the frozen rows ``(E - M, ...)`` and the
trainable rows ``(M, ...)``. A :mod:`torch.nn.utils.parametrize` parametrization
(:class:`ExpertRows`) stitches them back in expert order at every access, so the
layer still reads one ``(E, ...)`` tensor (``layer.experts.w1``, ``layer.q_proj``)
and its outputs equal the unsplit layer's exactly (the stitch copies values).

- The frozen rows get no gradient: optimisers (AdamW skips ``grad is None``) keep
  no state for them and apply no weight decay, and DDP does not reduce them.
- State dicts keep the stock keys and shapes: ``<owner>.w1`` ``(E, ...)`` is saved
  (stitched) and loaded (split), so a partially trained layer's checkpoint loads
  into an ordinary layer and the reverse.

Parametrized modules cannot be pickled whole (``torch.save(model)``); save their
state dict, as OpenMMLab's checkpoints do.
"""
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from .routed_layer import RoutedLayer


class ExpertRows(nn.Module):
    """Parametrization of an ``(E, ...)`` expert stack by its frozen rows (the
    parametrized ``original``, ``(E - M, ...)``) and :attr:`rows`, the trainable
    rows ``(M, ...)`` of ``trainable_ids`` (ascending).

    Args:
        num_experts (int): E.
        trainable_ids (Sequence[int]): The M trainable experts, 0 < M < E.
        device (torch.device): Of the stack.
    """

    def __init__(self, num_experts: int, trainable_ids: Sequence[int],
                 device: torch.device):
        super().__init__()
        self.num_experts = num_experts
        trainable = torch.tensor(sorted(trainable_ids), dtype=torch.long, device=device)
        is_trainable = torch.zeros(num_experts, dtype=torch.bool, device=device)
        is_trainable[trainable] = True
        frozen = (~is_trainable).nonzero().flatten()
        # order[e]: the row of expert e in cat([frozen rows, trainable rows])
        order = torch.empty_like(is_trainable, dtype=torch.long)
        order[torch.cat([frozen, trainable])] = torch.arange(num_experts, device=device)
        self.register_buffer('trainable_ids', trainable, persistent=False)
        self.register_buffer('frozen_ids', frozen, persistent=False)
        self.register_buffer('order', order, persistent=False)
        self.rows = None

    def right_inverse(self, stack: torch.Tensor) -> torch.Tensor:
        """(E, ...) -> the frozen rows (E - M, ...); the trainable ones go to
        :attr:`rows` (a new trainable Parameter, or copied into it)."""
        rows = stack.index_select(0, self.trainable_ids)
        if self.rows is None:
            self.rows = nn.Parameter(rows.clone())
        else:
            self.rows.copy_(rows)
        return stack.index_select(0, self.frozen_ids)

    def forward(self, frozen: torch.Tensor) -> torch.Tensor:
        """(E - M, ...) frozen rows -> (E, ...) stack."""
        return torch.cat([frozen, self.rows]).index_select(0, self.order)

    def split(self, stack: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(E, ...) -> (frozen rows, trainable rows), for loading a state dict."""
        return (stack.index_select(0, self.frozen_ids.to(stack.device)),
                stack.index_select(0, self.trainable_ids.to(stack.device)))

    def extra_repr(self) -> str:
        return f'num_experts={self.num_experts}, trainable={self.trainable_ids.tolist()}'


def expert_stacks(layer: RoutedLayer) -> List[Tuple[nn.Module, str]]:
    """(owner module, attribute) of each stacked ``(E, ...)`` expert tensor of
    ``layer``: the names its modules list in ``EXPERT_STACKS`` (``experts.w1``, ...
    of an MoE MLP; ``q_proj``, ``q_bias``, ``o_proj`` of an MoA)."""
    return [(module, name) for module in layer.modules()
            for name in getattr(module, 'EXPERT_STACKS', ())
            if getattr(module, name) is not None]


def _split_stacks(module: nn.Module) -> List[Tuple[str, ExpertRows]]:
    """(attribute, parametrization) of ``module``'s split expert stacks."""
    if not parametrize.is_parametrized(module):
        return []
    return [(name, plist[0]) for name, plist in module.parametrizations.items()
            if isinstance(plist[0], ExpertRows)]


def _save_stacks(module: nn.Module, state_dict: dict, prefix: str,
                 local_metadata) -> None:
    """State dict post-hook: each split stack as the stock ``<prefix><name>``."""
    for name, _ in _split_stacks(module):
        del state_dict[f'{prefix}parametrizations.{name}.original']
        del state_dict[f'{prefix}parametrizations.{name}.0.rows']
        with torch.no_grad():
            state_dict[prefix + name] = getattr(module, name).detach()


def _load_stacks(module: nn.Module, state_dict: dict, prefix: str, local_metadata,
                 strict, missing_keys, unexpected_keys, error_msgs) -> None:
    """Load pre-hook: a stock ``<prefix><name>`` (E, ...) into the split stack."""
    for name, rows in _split_stacks(module):
        key = prefix + name
        if key not in state_dict:
            continue
        stack = state_dict.pop(key)
        if stack.shape[0] != rows.num_experts:
            error_msgs.append(f'{key}: the checkpoint has {stack.shape[0]} experts, '
                              f'the layer {rows.num_experts}.')
            continue
        frozen, trainable = rows.split(stack)
        state_dict[f'{prefix}parametrizations.{name}.original'] = frozen
        state_dict[f'{prefix}parametrizations.{name}.0.rows'] = trainable


def _unsplit(module: nn.Module, name: str) -> nn.Parameter:
    """The stack ``module.<name>`` as one Parameter again (merging a split)."""
    if any(n == name for n, _ in _split_stacks(module)):
        parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return getattr(module, name)


def train_experts(layer: RoutedLayer, expert_ids: Sequence[int]) -> None:
    """Let the experts ``expert_ids`` of ``layer`` train and freeze its others.

    Only the stacked expert tensors change (:func:`expert_stacks`); the router and
    the shared parts (an MoA's key/value head and output bias) keep their
    ``requires_grad``. No or all experts: the stacks stay whole Parameters, frozen
    or trainable; otherwise each is split (:class:`ExpertRows`). Calling it again
    re-splits with the stacks' current values.

    Args:
        layer (RoutedLayer): An MoE MLP or MoA.
        expert_ids (Sequence[int]): Distinct expert ids in [0, E).
    """
    num_experts = layer.num_experts
    ids = sorted(set(int(e) for e in expert_ids))
    if len(ids) != len(expert_ids):
        raise ValueError(f'Trainable experts repeat an expert: {list(expert_ids)}.')
    outside = [e for e in ids if not 0 <= e < num_experts]
    if outside:
        raise ValueError(f'Trainable experts {outside} are out of range: the layer has '
                         f'{num_experts} experts (ids 0 to {num_experts - 1}).')
    for module, name in expert_stacks(layer):
        stack = _unsplit(module, name)
        stack.requires_grad_(len(ids) == num_experts)
        if 0 < len(ids) < num_experts:
            parametrize.register_parametrization(
                module, name, ExpertRows(num_experts, ids, stack.device), unsafe=True)
            module.parametrizations[name].original.requires_grad_(False)
        if not getattr(module, '_expert_rows_hooks', False):
            module.register_state_dict_post_hook(_save_stacks)
            module.register_load_state_dict_pre_hook(_load_stacks)
            module._expert_rows_hooks = True


def trainable_experts(layer: RoutedLayer) -> List[int]:
    """Ids of the experts of ``layer`` whose stacked tensors train."""
    stacks = expert_stacks(layer)
    split = [rows for module, _ in stacks for _, rows in _split_stacks(module)]
    if split:
        return split[0].trainable_ids.tolist()
    if stacks and getattr(*stacks[0]).requires_grad:
        return list(range(layer.num_experts))
    return []
