"""The KV cache's copies (numpy, not torch's threads) keep every dtype's bits."""

from __future__ import annotations

import pytest
import torch

from gemma_chat.infrastructure.llm.engine.config import Gemma3Config
from gemma_chat.infrastructure.llm.engine.kv_cache import KVCache

CONFIG = Gemma3Config.from_hf(
    {
        "vocab_size": 64,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 6,  # the sixth global
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "rms_norm_eps": 1e-6,
        "sliding_window": 8,
        "query_pre_attn_scalar": 16,
        "max_position_embeddings": 1024,
    }
)


def _fill(cache: KVCache, slot: int, length: int, seed: int) -> None:
    """Random keys and values at positions [0, length) of every layer (ring positions for the
    sliding ones, as the model writes them)."""
    gen = torch.Generator().manual_seed(seed)
    for layer in range(CONFIG.num_layers):
        k, v = cache.layer(slot, layer)
        for position in range(length):
            at = position % k.shape[1]
            k[:, at] = torch.randn(k[:, at].shape, generator=gen).to(k.dtype)
            v[:, at] = torch.randn(v[:, at].shape, generator=gen).to(v.dtype)


def _held(cache: KVCache, slot: int, length: int) -> list[torch.Tensor]:
    """Every layer's keys and values at the positions [0, length) its ring still holds."""
    out = []
    for layer in range(CONFIG.num_layers):
        k, v = cache.layer(slot, layer)
        first = max(0, length - k.shape[1])
        where = torch.arange(first, length) % k.shape[1]
        out += [k[:, where].clone(), v[:, where].clone()]
    return out


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
# the ring (window 8 + chunk 4: 16 positions) not full, full, wrapped to its start, wrapped
# past it (the positions held run over the ring's end)
@pytest.mark.parametrize("length", [10, 16, 32, 40])
def test_a_snapshot_restores_the_same_bits_into_another_slot(
    dtype: torch.dtype, length: int
) -> None:
    cache = KVCache(CONFIG, slots=2, dtype=dtype, chunk=4)
    cache.ensure(0, length)
    _fill(cache, 0, length, seed=1)
    before = _held(cache, 0, length)
    snapshot = cache.read(0, length)
    assert all(t.dtype == dtype for t in snapshot.tensors())
    _fill(cache, 0, length, seed=2)  # the snapshot is a copy: rewriting the slot leaves it
    cache.write(1, snapshot, length)
    after = _held(cache, 1, length)
    for a, b in zip(before, after, strict=True):
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_growing_a_slot_keeps_its_positions_and_the_new_ones_are_zero(dtype: torch.dtype) -> None:
    cache = KVCache(CONFIG, slots=1, dtype=dtype, chunk=4)
    cache.ensure(0, 10, exact=True)
    _fill(cache, 0, 10, seed=3)
    before = _held(cache, 0, 10)
    cache.ensure(0, 200, exact=True)
    assert cache.capacity(0) == 208
    assert all(torch.equal(a, b) for a, b in zip(before, _held(cache, 0, 10), strict=True))
    global_layer = CONFIG.sliding_layers.index(False)
    k, v = cache.layer(0, global_layer)
    assert not k[:, 10:].any()
    assert not v[:, 10:].any()
    assert k.data_ptr() % 64 == 0  # the kernels' vector loads stay within cache lines
    # the tables the C blocks read point at the grown rows
    assert int(cache.k_addresses[global_layer, 0]) == k.data_ptr()
    assert int(cache.capacities[global_layer, 0]) == 208
