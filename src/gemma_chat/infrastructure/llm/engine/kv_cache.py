"""The engine's KV cache: each slot (a sequence) holds its own keys and values.

Gemma 3 and 4 have two kinds of layers (Gemma 4's each with its own head count and size,
``kv_shape``). A sliding-window layer's query sees only the last ``window`` positions, so its
keys and values live in a ring of ``ring`` positions (the window and the largest number of a
sequence's tokens fed in one pass, ``chunk``): position p at p % ring. A global layer's query
sees every position before it, so its keys and values grow with the sequence (position p at p).
Each slot's memory is its own: one long conversation grows its own rows, not every slot's, and
``release`` hands a slot's memory back. A Gemma 4 layer that shares another's keys and values
(``kv_sources``) holds none: ``layer`` gives the other's.

For the fused C blocks (``gemma_decode_block``), every layer has a table of each slot's address
and capacity (``k_addresses``, ``v_addresses``, ``capacities``: [L, slots] int64).

Its copies and zeroed allocations run in numpy on the calling thread, not as torch operations:
torch runs copies this large on its OpenMP threads, which then spin on the cores the kernels'
own thread pool needs (DEVELOPMENT.md, "Concurrent requests: where an 8-row step's time goes").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from gemma_chat.infrastructure.llm.engine.config import TextConfig

__all__ = ["DEFAULT_CHUNK", "KVCache", "KVSnapshot"]

# A sequence's tokens fed to the model in one pass at most: the ring must hold them beside the
# window, so it is a memory cost per slot; prefill passes of this size still multiply full tiles.
DEFAULT_CHUNK = 256
_POSITIONS = 16  # capacities are whole blocks of 16 positions (the C attention reads 16 at once)


def _whole_blocks(length: int) -> int:
    return -(-length // _POSITIONS) * _POSITIONS


# Each dtype's bits as the integer of its size: numpy copies any dtype's bits (bfloat16 too,
# which numpy does not know).
_ALIGNMENT = 64
_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: torch.Tensor) -> np.ndarray:
    """A numpy view of ``t``'s elements (same memory, same strides)."""
    return t.view(_BITS[t.element_size()]).numpy()


def _zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Zeroed memory from ``calloc`` (large blocks come zeroed from the system, each page
    touched when first written), not filled by torch's threads; at a 64-byte boundary, as
    torch's own allocations are (the C kernels' vector loads stay within cache lines)."""
    size = torch.empty((), dtype=dtype).element_size() * math.prod(shape)
    raw = np.zeros(size + _ALIGNMENT, dtype=np.uint8)
    start = -raw.ctypes.data % _ALIGNMENT
    return torch.from_numpy(raw[start : start + size]).view(dtype).view(shape)


def _copy(target: torch.Tensor, source: torch.Tensor) -> None:
    np.copyto(_bits(target), _bits(source))


def _clone(source: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``source``."""
    return torch.from_numpy(_bits(source).copy()).view(source.dtype)


@dataclass(frozen=True, slots=True)
class KVSnapshot:
    """A copy of one sequence's keys and values for positions [0, length): every position for the
    global layers, the last ones (from ``local_from``) for the sliding-window layers."""

    length: int
    local_from: int
    window: int
    local_k: torch.Tensor  # [L_local, H_kv, length - local_from, D]
    local_v: torch.Tensor
    global_k: torch.Tensor  # [L_global, H_kv, length, D]
    global_v: torch.Tensor

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.local_k, self.local_v, self.global_k, self.global_v

    def serves(self, prefix: int) -> bool:
        """Whether the first ``prefix`` positions can be restored from it: the next position's
        window must be held (its earlier positions are gone from the ring)."""
        return 0 < prefix <= self.length and _holds_window(self.local_from, prefix, self.window)


def _holds_window(first_held: int, prefix: int, window: int) -> bool:
    """Whether keys from ``first_held`` on cover the window of the query at position ``prefix``."""
    return first_held <= max(0, prefix + 1 - window)


@dataclass(slots=True)
class _SlotRows:
    local_k: torch.Tensor  # [L_local, H_kv, local capacity, D]
    local_v: torch.Tensor
    global_k: torch.Tensor  # [L_global, H_kv, global capacity, D]
    global_v: torch.Tensor

    @property
    def nbytes(self) -> int:
        tensors = (self.local_k, self.local_v, self.global_k, self.global_v)
        return sum(t.numel() * t.element_size() for t in tensors)


class KVCache:
    """Keys and values of up to ``slots`` sequences, each slot's rows allocated as it grows."""

    def __init__(
        self,
        config: TextConfig,
        slots: int,
        dtype: torch.dtype,
        *,
        chunk: int = DEFAULT_CHUNK,
    ) -> None:
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1, got {chunk}")
        self.config = config
        self.dtype = dtype
        self.max_slots = slots
        self.chunk = chunk
        self.window = config.sliding_window
        # The layers that hold keys and values (a layer sharing another's holds none), and each
        # layer's place: (sliding?, index among the holding layers of its kind).
        sources = config.kv_sources
        holding = [i for i in range(config.num_layers) if sources[i] == i]
        self._local_layers = [i for i in holding if config.sliding_layers[i]]
        self._global_layers = [i for i in holding if not config.sliding_layers[i]]
        self._place = [
            (s, (self._local_layers if s else self._global_layers).index(sources[i]))
            for i, s in enumerate(config.sliding_layers)
        ]
        # A pass writes up to ``chunk`` positions before its first one attends to the window
        # behind it: the ring holds both.
        self.ring = _whole_blocks(self.window + chunk)
        self._rows: list[_SlotRows | None] = [None] * slots
        layers = config.num_layers
        self.k_addresses = torch.zeros((layers, slots), dtype=torch.int64)
        self.v_addresses = torch.zeros((layers, slots), dtype=torch.int64)
        self.capacities = torch.zeros((layers, slots), dtype=torch.int64)

    # -- sizes ------------------------------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        return sum(rows.nbytes for rows in self._rows if rows is not None)

    def slot_nbytes(self, slot: int) -> int:
        rows = self._rows[slot]
        return 0 if rows is None else rows.nbytes

    def capacity(self, slot: int) -> int:
        """Positions the slot's global layers hold (the sliding ones hold at most ``ring``)."""
        rows = self._rows[slot]
        return 0 if rows is None else int(rows.global_k.shape[2])

    def holds_more_than(self, slot: int, length: int) -> bool:
        """Whether the slot's rows are larger than ``ensure(slot, length, exact=True)`` makes."""
        return self.capacity(slot) > _whole_blocks(length)

    def local_capacity(self, slot: int) -> int:
        rows = self._rows[slot]
        return 0 if rows is None else int(rows.local_k.shape[2])

    # -- growing and releasing --------------------------------------------------------------------

    def ensure(self, slot: int, length: int, *, exact: bool = False) -> None:
        """Make room in ``slot`` for positions [0, length) (keeping what it holds); ``exact``:
        no more than that (the caller reserved a whole turn), else grown by a quarter at least,
        so that a sequence fed token by token copies its rows rarely."""
        if not 0 <= slot < self.max_slots:
            raise ValueError(f"slot {slot} is beyond the cache's {self.max_slots} slots")
        rows = self._rows[slot]
        local = min(self.ring, _whole_blocks(length))
        if rows is None:
            self._rows[slot] = self._new_rows(local, _whole_blocks(length))
            self._publish(slot)
            return
        old_local, old_global = int(rows.local_k.shape[2]), int(rows.global_k.shape[2])
        if length <= old_global and local <= old_local:
            return
        wanted = length if exact else max(length, old_global + old_global // 4)
        new_global = max(old_global, _whole_blocks(wanted))
        new_local = max(old_local, min(self.ring, _whole_blocks(max(local, new_global))))
        grown = self._new_rows(new_local, new_global)
        # A ring smaller than ``ring`` has never wrapped: its positions are where they were.
        _copy(grown.local_k[:, :, :old_local], rows.local_k)
        _copy(grown.local_v[:, :, :old_local], rows.local_v)
        _copy(grown.global_k[:, :, :old_global], rows.global_k)
        _copy(grown.global_v[:, :, :old_global], rows.global_v)
        self._rows[slot] = grown
        self._publish(slot)

    def release(self, slot: int) -> None:
        """Hand the slot's memory back (what it held is gone)."""
        self._rows[slot] = None
        self._publish(slot)

    def _new_rows(self, local: int, global_: int) -> _SlotRows:
        c = self.config
        local = local if self._local_layers else 0
        global_ = global_ if self._global_layers else 0

        def zeros(layers: int, length: int, sliding: bool) -> torch.Tensor:
            heads, size = c.kv_shape(sliding)
            return _zeros((layers, heads, length, size), self.dtype)

        n_local, n_global = len(self._local_layers), len(self._global_layers)
        return _SlotRows(
            zeros(n_local, local, True),
            zeros(n_local, local, True),
            zeros(n_global, global_, False),
            zeros(n_global, global_, False),
        )

    def _publish(self, slot: int) -> None:
        """The slot's addresses and capacities in the tables the C blocks read."""
        for layer in range(self.config.num_layers):
            k, v = self.layer(slot, layer) if self._rows[slot] is not None else (None, None)
            self.k_addresses[layer, slot] = 0 if k is None else k.data_ptr()
            self.v_addresses[layer, slot] = 0 if v is None else v.data_ptr()
            self.capacities[layer, slot] = 0 if k is None else k.shape[1]

    # -- access -----------------------------------------------------------------------------------

    def layer(self, slot: int, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The slot's keys and values of one layer: [H_kv, capacity, D] each, position p at
        p % capacity."""
        rows = self._rows[slot]
        if rows is None:
            raise ValueError(f"slot {slot} holds no keys and values")
        sliding, index = self._place[layer]
        if sliding:
            return rows.local_k[index], rows.local_v[index]
        return rows.global_k[index], rows.global_v[index]

    def holds_window(self, slot: int, cached: int, prefix: int) -> bool:
        """Whether the first ``prefix`` of the ``cached`` positions in ``slot`` can be continued
        from: the sliding layers' ring still holds the window before position ``prefix``."""
        first_held = max(0, cached - self.local_capacity(slot)) if self._local_layers else 0
        return _holds_window(first_held, prefix, self.window)

    def read(self, slot: int, length: int) -> KVSnapshot:
        """A copy of the slot's positions [0, length) (the ring's last ones, for sliding layers)."""
        rows = self._rows[slot]
        if rows is None:
            raise ValueError(f"slot {slot} holds no keys and values")
        ring = int(rows.local_k.shape[2])
        local_from = max(0, length - ring) if self._local_layers else 0
        first = local_from % ring if self._local_layers else 0
        count = length - local_from if self._local_layers else 0

        def ring_part(t: torch.Tensor) -> torch.Tensor:
            # the ring's positions [local_from, length): one slice, or two where it wraps
            # (copied as whole rows; numpy's indexing by a list of positions went element by
            # element)
            bits = _bits(t)
            if first + count <= ring:
                parts: tuple[np.ndarray, ...] = (bits[:, :, first : first + count],)
            else:
                parts = (bits[:, :, first:], bits[:, :, : first + count - ring])
            return torch.from_numpy(np.concatenate(parts, axis=2)).view(t.dtype)

        return KVSnapshot(
            length=length,
            local_from=local_from,
            window=self.window,
            local_k=ring_part(rows.local_k),
            local_v=ring_part(rows.local_v),
            global_k=_clone(rows.global_k[:, :, :length]),
            global_v=_clone(rows.global_v[:, :, :length]),
        )

    def write(self, slot: int, snapshot: KVSnapshot, length: int) -> None:
        """Put a snapshot's first ``length`` positions (``snapshot.serves(length)``) in ``slot``."""
        if not snapshot.serves(length):
            raise ValueError(f"the snapshot cannot give back its first {length} positions")
        self.ensure(slot, length)
        rows = self._rows[slot]
        assert rows is not None
        ring = int(rows.local_k.shape[2])
        start = max(snapshot.local_from, length - ring)
        if self._local_layers:
            where = np.arange(start, length) % ring
            held = slice(start - snapshot.local_from, length - snapshot.local_from)
            _bits(rows.local_k)[:, :, where] = _bits(snapshot.local_k)[:, :, held]
            _bits(rows.local_v)[:, :, where] = _bits(snapshot.local_v)[:, :, held]
        _copy(rows.global_k[:, :, :length], snapshot.global_k[:, :, :length])
        _copy(rows.global_v[:, :, :length], snapshot.global_v[:, :, :length])
