"""How much memory a model takes on the engine, computed from its config before anything loads.

Weights: the bytes the engine's tensors hold. A matrix in int8 blocks (``q8.pack_weight``) is
its output rows padded to a tile of 16, a byte a weight, a float16 scale per block of 32 and
one float32 factor; in 4-bit blocks (``pack_weight4``), half a byte a weight and the same
scales; a float matrix, the dtype's size a weight. The embedding table is held once when tied
to the output head (the int8/4-bit head is the table, with the kernels), norms in float32.

KV cache: one sequence's keys and values as ``KVCache`` allocates them: a global layer holds
every position (in whole blocks of 16 positions), a sliding-window layer a ring of the window
and one pass's chunk, at most; float16 with the int8 kernels, else the compute dtype.

A model is refused when its weights, the prefix store's budget and the keys and values of a
``RESERVED_TOKENS``-token conversation exceed the memory limit, or when it is to be converted
and the conversion's peak does: conversion goes one tensor at a time (``conversion.py``; the
vocabulary table a piece of rows at a time) and frees each before the converted model is read
back, so its peak is the larger of the engine's model and the largest weight, or piece, being
converted (``conversion_bytes``; measured: DEVELOPMENT.md, "Conversion, tensor by tensor").

That is Gemma 3's count of weights and keys and values, exact; its conversion's peak is
estimated (a piece of the table counted as Gemma 4's pieces are, 20 bytes a weight, beside the
rounding's temporaries; a tied 4-bit head's conversion at least the int8 model it runs first
for the head's GPTQ inputs). Gemma 4 is counted through its config (``weight_counts``,
``kv_sources``, ``kv_shape``: per-layer shapes, shared keys and values, PLE, MoE), its weights
within a few percent; it converts a piece of a weight at a time (``conversion.convert_streamed``:
at most ``WEIGHTS_AT_A_TIME`` weights read at once, whatever its largest tensor), so its
conversion's peak is the bytes around the largest piece read (``_estimate_gemma4``); to the
``int4`` format, whose tied head is rounded by GPTQ on the int8 model's head inputs, at least
the int8 model, loaded and run first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gemma_chat.infrastructure.llm.engine.config import Gemma4Config, TextConfig
from gemma_chat.infrastructure.llm.engine.conversion import largest_read, rows_at_a_time
from gemma_chat.infrastructure.llm.engine.kv_cache import DEFAULT_CHUNK

__all__ = [
    "RESERVED_TOKENS",
    "MemoryEstimate",
    "available_memory_bytes",
    "estimate_memory",
]

RESERVED_TOKENS = 4096  # a conversation's worth of keys and values counted in the check
_BLOCK, _LANES, _POSITIONS = 32, 16, 16  # q8.BLOCK, q8.LANES, kv_cache's blocks of positions
# Bytes per weight of a weight being converted: float32 (4) beside the bfloat16 it was read
# from (2) or its int8 / 4-bit copy and a few rows' temporaries; a weight made of parts (q, k,
# v; gate, up) holds the float32 parts and their concatenation (8).
_CONVERTING_BYTES_PER_WEIGHT = 6
_CONCATENATING_BYTES_PER_WEIGHT = 8
# torch's temporaries while one piece of a matrix is rounded to int8 (``q8.quantize_packed``:
# 16M weights a piece, a few float32 and int16 copies of it).
_ROUNDING_TEMPORARIES_BYTES = 256 * 2**20
_Q8_BYTES_PER_WEIGHT = 34 / 32  # Gemma 4's count: an int8 per weight, a float16 scale per 32
# Bytes per weight of a piece being converted a piece at a time (Gemma 4): the float32 piece
# (4) and, while it is rounded to int8, torch's float32 temporaries of it (two at a time: 8),
# its int8 values and packed copy (2), and what the allocator keeps of the freed ones:
# measured up to 17.2, sampled (DEVELOPMENT.md, "Conversion, tensor by tensor"); 20 leaves
# room for what the sampling misses.
_STREAMED_BYTES_PER_WEIGHT = 20
# A tied 4-bit head rounded by GPTQ a piece at a time (``conversion._gptq_rows``) keeps its
# float32 scales, one per 32 weights, until the last piece: an eighth of a byte a weight of the
# whole head beside the piece (whose GPTQ temporaries measured within the 20 bytes above).
_GPTQ_SCALE_BYTES_PER_WEIGHT = 1 / 8


@dataclass(frozen=True, slots=True)
class MemoryEstimate:
    parameters: int
    weights_bytes: int
    kv_bytes_per_token: int  # a global layer's growth: what each token adds past the window
    prefix_budget_bytes: int
    kv_fixed_bytes: int = 0  # the sliding-window layers' rings, once full
    ring: int = 0  # positions a sliding-window layer's ring holds
    converting_bytes: int = 0  # the most one weight (or a GPTQ head's int8 model) takes

    def kv_bytes(self, tokens: int) -> int:
        """One sequence's keys and values at ``tokens`` positions, as ``KVCache`` holds them
        (``ensure(..., exact=True)``)."""
        held = -(-tokens // _POSITIONS) * _POSITIONS
        if self.ring == 0:
            return self.kv_bytes_per_token * held
        local = self.kv_fixed_bytes * min(held, self.ring) // self.ring
        return self.kv_bytes_per_token * held + local

    @property
    def kv_reserved_bytes(self) -> int:
        return self.kv_bytes(RESERVED_TOKENS) + self.prefix_budget_bytes

    @property
    def conversion_bytes(self) -> int:
        """The peak of a first load: conversion holds one weight at a time (in float32, with
        its converted copy), then the converted model is read back (converted_store.py)."""
        return max(self.weights_bytes, self.converting_bytes)

    @property
    def required_bytes(self) -> int:
        return self.weights_bytes + self.kv_reserved_bytes

    def describe(self) -> dict[str, Any]:
        return {
            "parameters": self.parameters,
            "weights_mb": round(self.weights_bytes / 2**20, 1),
            # past the sliding window, each 1k tokens add this much (the global layers')
            "kv_cache_mb_per_1k_tokens": round(self.kv_bytes_per_token * 1024 / 2**20, 2),
            f"kv_cache_mb_at_{RESERVED_TOKENS}_tokens": round(
                self.kv_bytes(RESERVED_TOKENS) / 2**20, 1
            ),
            "required_mb": round(self.required_bytes / 2**20, 1),
            "conversion_mb": round(self.conversion_bytes / 2**20, 1),
        }


def estimate_memory(
    config: TextConfig,
    *,
    quantized: bool,
    dtype: torch.dtype,
    tied: bool,
    prefix_budget_bytes: int = 0,
    head_bits: int = 8,
    block_bits: int = 8,
    lookup_bits: int = 0,
    chunk: int = DEFAULT_CHUNK,
) -> MemoryEstimate:
    """``quantized``: the int8 kernels' format (the head in ``head_bits``, the blocks'
    projections in ``block_bits``: 8 or 4; ``lookup_bits`` 8: a tied embedding's lookups from
    an int8 table of their own, ``q8.BlockBits.lookup``), else float ``dtype``; ``chunk``: the
    cache's (``KVCache``), whose rings hold it beside the window."""
    if isinstance(config, Gemma4Config):
        return _estimate_gemma4(
            config,
            quantized=quantized,
            dtype=dtype,
            tied=tied,
            prefix_budget_bytes=prefix_budget_bytes,
            chunk=chunk,
            head_bits=head_bits,
        )
    c = config
    itemsize = torch.empty((), dtype=dtype).element_size()
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    # Each block's projections [N, K]: qkv, o, gate_up, down.
    shapes = [(q + 2 * kv, c.hidden_size), (c.hidden_size, q)]
    shapes += [(2 * c.intermediate_size, c.hidden_size), (c.hidden_size, c.intermediate_size)]

    def matrix(n: int, k: int, bits: int) -> int:
        if not quantized:
            return n * k * itemsize
        rows = -(-n // _LANES) * _LANES
        return rows * k * bits // 8 + rows * (k // _BLOCK) * 2 + 4

    table = c.vocab_size * c.hidden_size
    blocks = c.num_layers * sum(matrix(n, k, block_bits) for n, k in shapes)
    head = matrix(c.vocab_size, c.hidden_size, head_bits)
    if not tied:  # the float lookup table beside the head
        head += table * itemsize
    elif quantized and lookup_bits == 8:
        head += matrix(c.vocab_size, c.hidden_size, 8)
    norms = c.num_layers * (4 * c.hidden_size + 2 * c.head_dim) + c.hidden_size
    kv_itemsize = 2 if quantized else itemsize  # the int8 kernels keep a float16 cache
    per_position = 2 * kv * kv_itemsize  # keys and values of one layer
    sliding = sum(c.sliding_layers)
    ring = -(-(c.sliding_window + chunk) // _POSITIONS) * _POSITIONS
    matrices = c.num_layers * sum(n * k for n, k in shapes) + table * (1 if tied else 2)
    # The vocabulary table is read a piece of rows at a time (``conversion.convert_weights``),
    # but for a float or 4-bit head of its own (untied), which is cast or rounded whole.
    if not tied and (not quantized or head_bits == 4):
        table_bytes = _CONVERTING_BYTES_PER_WEIGHT * table
    else:
        piece = min(table, rows_at_a_time(c.hidden_size) * c.hidden_size)
        table_bytes = _STREAMED_BYTES_PER_WEIGHT * piece
    converting = _ROUNDING_TEMPORARIES_BYTES + max(
        table_bytes,
        _CONVERTING_BYTES_PER_WEIGHT * max(n * k for n, k in shapes[1::2]),
        _CONCATENATING_BYTES_PER_WEIGHT * max(n * k for n, k in shapes[0::2]),
    )
    if quantized and tied and head_bits == 4:  # GPTQ: the int8 model runs first
        eight = c.num_layers * sum(matrix(n, k, 8) for n, k in shapes)
        converting = max(converting, eight + matrix(c.vocab_size, c.hidden_size, 8) + 4 * norms)
    return MemoryEstimate(
        parameters=matrices + norms,
        weights_bytes=blocks + head + 4 * norms,
        kv_bytes_per_token=(c.num_layers - sliding) * per_position,
        prefix_budget_bytes=prefix_budget_bytes,
        kv_fixed_bytes=sliding * per_position * ring,
        ring=ring if sliding else 0,
        converting_bytes=converting,
    )


def _estimate_gemma4(
    config: Gemma4Config,
    *,
    quantized: bool,
    dtype: torch.dtype,
    tied: bool,
    prefix_budget_bytes: int,
    chunk: int,
    head_bits: int = 8,
) -> MemoryEstimate:
    """Gemma 4 counted through its config (per-layer shapes, shared keys and values, PLE, MoE):
    its weights at the int8 format's bytes per weight (with ``head_bits`` 4, the head at half a
    byte a weight; rows are not padded: within a few percent); its keys and values as
    ``KVCache`` holds them (only the layers that compute their own; sliding ones in rings).
    Its conversion's peak is that of the largest piece of a weight read at once
    (``conversion.largest_read``: the per-layer inputs' table and the embedding go in pieces);
    with a tied 4-bit head (GPTQ, fitted on the int8 model's head inputs), the larger of that
    plus the head's scales and the int8 model, loaded and run first (a pass's activations not
    counted, as they are not for running the model)."""
    matrices, norms = config.weight_counts(tied=tied)  # each architecture counts its own
    itemsize = torch.empty((), dtype=dtype).element_size()
    per_weight = _Q8_BYTES_PER_WEIGHT if quantized else itemsize
    kv_itemsize = 2 if quantized else itemsize  # the int8 kernels keep a float16 cache
    ring = -(-(config.sliding_window + chunk) // _POSITIONS) * _POSITIONS
    per_token = fixed = 0
    sliding_held = False
    for layer, source in enumerate(config.kv_sources):
        if source != layer:
            continue  # attends to an earlier layer's keys and values
        sliding = config.sliding_layers[layer]
        heads, dim = config.kv_shape(sliding)
        per_position = 2 * heads * dim * kv_itemsize
        if sliding:
            fixed += per_position * ring
            sliding_held = True
        else:
            per_token += per_position
    weights = int(matrices * per_weight) + 4 * norms
    converting = _STREAMED_BYTES_PER_WEIGHT * largest_read(config)
    if quantized and head_bits == 4:  # the head's half byte a weight instead of one
        head = config.vocab_size * config.hidden_size
        if tied:  # GPTQ: the int8 model runs first (its weights), then the head goes in pieces
            converting = max(converting + int(head * _GPTQ_SCALE_BYTES_PER_WEIGHT), weights)
        weights -= head // 2
    return MemoryEstimate(
        parameters=matrices + norms,
        weights_bytes=weights,
        kv_bytes_per_token=per_token,
        prefix_budget_bytes=prefix_budget_bytes,
        kv_fixed_bytes=fixed,
        ring=ring if sliding_held else 0,
        converting_bytes=converting,
    )


def available_memory_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """The memory the system can give without swapping (Linux's MemAvailable), if known."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
