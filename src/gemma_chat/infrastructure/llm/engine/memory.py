"""How much memory a model takes on the engine, computed from its config before anything loads.

Weights: every matrix in the engine's format (int8 blocks: one byte a weight and a float16
scale per 32; float: the dtype's size), the embedding table once when tied to the output
projection, norms in float32. KV cache: keys and values of every layer, float16 with the int8
kernels (else the compute dtype), per token. A model is refused when its weights, the prefix
store's budget and the keys and values of ``RESERVED_TOKENS`` tokens exceed the memory limit,
or when it is to be converted and its float32 weights (the conversion's peak) exceed it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gemma_chat.infrastructure.llm.engine.config import TextConfig

__all__ = [
    "RESERVED_TOKENS",
    "MemoryEstimate",
    "available_memory_bytes",
    "estimate_memory",
]

RESERVED_TOKENS = 4096  # a conversation's worth of keys and values counted in the check
_Q8_BYTES_PER_WEIGHT = 34 / 32  # an int8 per weight, a float16 scale per block of 32


@dataclass(frozen=True, slots=True)
class MemoryEstimate:
    parameters: int
    weights_bytes: int
    kv_bytes_per_token: int
    prefix_budget_bytes: int

    @property
    def kv_reserved_bytes(self) -> int:
        return self.kv_bytes_per_token * RESERVED_TOKENS + self.prefix_budget_bytes

    @property
    def conversion_bytes(self) -> int:
        """The peak of a first load: the whole model assembled in float32 before it is cast or
        quantized (converted_store.py)."""
        return 4 * self.parameters

    @property
    def required_bytes(self) -> int:
        return self.weights_bytes + self.kv_reserved_bytes

    def describe(self) -> dict[str, Any]:
        return {
            "parameters": self.parameters,
            "weights_mb": round(self.weights_bytes / 2**20, 1),
            "kv_cache_mb_per_1k_tokens": round(self.kv_bytes_per_token * 1024 / 2**20, 2),
            "required_mb": round(self.required_bytes / 2**20, 1),
        }


def estimate_memory(
    config: TextConfig,
    *,
    quantized: bool,
    dtype: torch.dtype,
    tied: bool,
    prefix_budget_bytes: int = 0,
) -> MemoryEstimate:
    matrices, norms = config.weight_counts(tied=tied)  # each architecture counts its own
    itemsize = torch.empty((), dtype=dtype).element_size()
    per_weight = _Q8_BYTES_PER_WEIGHT if quantized else itemsize
    kv_itemsize = 2 if quantized else itemsize  # the int8 kernels keep a float16 cache
    return MemoryEstimate(
        parameters=matrices + norms,
        weights_bytes=int(matrices * per_weight) + 4 * norms,
        kv_bytes_per_token=config.kv_values_per_token() * kv_itemsize,
        prefix_budget_bytes=prefix_budget_bytes,
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
