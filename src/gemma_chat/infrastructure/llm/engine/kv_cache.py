"""The engine's KV cache: one row ("slot") per sequence, grown on demand."""

from __future__ import annotations

import torch

from gemma_chat.infrastructure.llm.engine.config import Gemma3Config

__all__ = ["KVCache"]


class KVCache:
    """Keys and values of every layer for up to ``slots`` sequences: [L, B, H_kv, T, D] each.

    Both the slot axis and the time axis grow on demand (the time axis doubling), so one short
    conversation holds one small row, not ``slots`` rows of the longest one.
    """

    def __init__(
        self, config: Gemma3Config, slots: int, dtype: torch.dtype, capacity: int = 256
    ) -> None:
        self.config = config
        self.dtype = dtype
        self.max_slots = slots
        capacity = -(-capacity // 16) * 16  # whole blocks of 16 positions (the C attention)
        shape = (config.num_layers, 1, config.num_kv_heads, capacity, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype)  # [L, B, H_kv, T, D]
        self.v = torch.zeros(shape, dtype=dtype)

    @property
    def slots(self) -> int:
        """Rows allocated so far."""
        return self.k.shape[1]

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2

    def ensure(self, slots: int, length: int) -> None:
        """Make room for rows [0, slots) and positions [0, length)."""
        if slots <= self.slots and length <= self.capacity:
            return
        if slots > self.max_slots:
            raise ValueError(f"slot {slots - 1} is beyond the cache's {self.max_slots} slots")
        new_length = self.capacity
        while new_length < length:
            new_length *= 2
        # Doubling stops at the model's window (unless asked for more), and never shrinks.
        limit = max(length, self.config.max_position_embeddings)
        new_length = max(self.capacity, min(new_length, limit))
        new_length = -(-new_length // 16) * 16  # whole blocks of 16 positions
        # Rows double too (up to the maximum): each growth copies the whole cache.
        rows = (
            self.slots if slots <= self.slots else min(max(slots, 2 * self.slots), self.max_slots)
        )
        shape = (self.k.shape[0], rows, self.k.shape[2], new_length)
        grown_k = self.k.new_zeros((*shape, self.k.shape[4]))
        grown_v = self.v.new_zeros(grown_k.shape)
        grown_k[:, : self.slots, :, : self.capacity] = self.k
        grown_v[:, : self.slots, :, : self.capacity] = self.v
        self.k, self.v = grown_k, grown_v

    def read(self, slot: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A copy of one slot's first ``length`` positions: [L, H_kv, length, D] each."""
        return self.k[:, slot, :, :length].clone(), self.v[:, slot, :, :length].clone()

    def write(self, slot: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Put a saved prefix (from ``read``) back into ``slot``."""
        length = k.shape[2]
        self.ensure(slot + 1, length)
        self.k[:, slot, :, :length] = k
        self.v[:, slot, :, :length] = v
