"""Dropless dispatch: sort (token, expert) assignments by expert, and back.

No capacity, no dropped token: each of the N tokens has k assignments ("slots",
``slot = token * k + j``); the M = N * k slots are sorted by expert so that every
expert's rows are contiguous. Everything stays on the device (no host sync) except
:attr:`TokenDispatch.splits`, which the per-expert loop needs.
"""
from functools import cached_property
from typing import List

import torch


class TokenDispatch:
    """The slots of N tokens routed to k of E experts each, sorted by expert.

    Args:
        indices (Tensor): (N, k) chosen experts of each token.
        num_experts (int): E.

    Attributes:
        order (Tensor): (M,) slot ids in expert order (stable: token order within an
            expert).
        token_ids (Tensor): (M,) token of each sorted slot.
        expert_ids (Tensor): (M,) expert of each sorted slot, non-decreasing.
        counts (Tensor): (E,) long, slots per expert (0 for an expert nobody chose).
    """

    def __init__(self, indices: torch.Tensor, num_experts: int):
        self.num_tokens, self.top_k = indices.shape
        flat = indices.reshape(-1)
        self.expert_ids, self.order = flat.sort(stable=True)
        self.token_ids = self.order.div(self.top_k, rounding_mode='floor')
        # scatter_add_ rather than bincount, which syncs with the host on CUDA
        self.counts = torch.zeros(
            num_experts, dtype=torch.long, device=flat.device).scatter_add_(
                0, flat, torch.ones_like(flat))

    @cached_property
    def inverse(self) -> torch.Tensor:
        """(M,) position of each slot in the sorted order."""
        positions = torch.arange(self.order.numel(), device=self.order.device)
        return torch.empty_like(self.order).scatter_(0, self.order, positions)

    @cached_property
    def splits(self) -> List[int]:
        """Slots per expert on the host (a device-to-host sync on CUDA)."""
        return self.counts.tolist()

    @cached_property
    def offsets(self) -> torch.Tensor:
        """(E,) int32 end of each expert's rows, the ``offs`` of ``torch._grouped_mm``."""
        return self.counts.cumsum(0).to(torch.int32)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Token rows in expert order: (N, D) -> (M, D)."""
        return x.index_select(0, self.token_ids)

    def gather_slots(self, x: torch.Tensor) -> torch.Tensor:
        """Slot rows in expert order: (N * k, D) -> (M, D)."""
        return x.index_select(0, self.order)

    def scatter_slots(self, y: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`gather_slots`: (M, D) -> (N * k, D)."""
        return y.index_select(0, self.inverse)

    def sum_tokens(self, y: torch.Tensor) -> torch.Tensor:
        """Sum over each token's k slots: (M, D) -> (N, D)."""
        return y.new_zeros(self.num_tokens, y.shape[-1]).index_add_(0, self.token_ids, y)
