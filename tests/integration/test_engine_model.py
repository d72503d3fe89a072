"""The lean Gemma 3 model computes what transformers' Gemma3ForCausalLM computes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gemma_chat.infrastructure.llm.engine.config import Gemma3Config
from gemma_chat.infrastructure.llm.engine.kv_cache import KVCache
from gemma_chat.infrastructure.llm.engine.weights import load_hf_state_dict


@pytest.fixture(scope="module")
def models(tiny_model_dir: Path) -> tuple[object, object]:
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    config = Gemma3Config.from_hf(json.loads((tiny_model_dir / "config.json").read_text()))
    lean = load_hf_state_dict(config, reference.state_dict(), torch.float32)
    return reference, lean


def reference_logits(reference: object, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return reference(input_ids=ids).logits[0]  # type: ignore[operator]


def test_prefill_matches_transformers_beyond_the_sliding_window(models: tuple) -> None:
    reference, lean = models
    ids = torch.randint(10, 300, (1, 150), generator=torch.Generator().manual_seed(0))
    cache = KVCache(lean.config, slots=1, dtype=torch.float32, capacity=32)
    with torch.inference_mode():
        ours = lean(ids, torch.arange(150).view(1, -1), torch.tensor([0]), cache, last_only=False)
    torch.testing.assert_close(ours[0], reference_logits(reference, ids), rtol=1e-4, atol=1e-4)
    assert cache.capacity >= 150


def test_decoding_token_by_token_matches_a_full_forward_pass(models: tuple) -> None:
    reference, lean = models
    ids = torch.randint(10, 300, (1, 90), generator=torch.Generator().manual_seed(1))
    expected = reference_logits(reference, ids)
    cache = KVCache(lean.config, slots=1, dtype=torch.float32)
    slots = torch.tensor([0])
    with torch.inference_mode():
        lean(ids[:, :20], torch.arange(20).view(1, -1), slots, cache)
        for pos in range(20, 90):
            step = lean(ids[:, pos : pos + 1], torch.tensor([[pos]]), slots, cache)
            torch.testing.assert_close(step[0], expected[pos], rtol=1e-4, atol=1e-4)


def test_sequences_at_different_positions_decode_together_as_they_would_alone(
    models: tuple,
) -> None:
    _, lean = models
    gen = torch.Generator().manual_seed(2)
    a = torch.randint(10, 300, (1, 30), generator=gen)
    b = torch.randint(10, 300, (1, 75), generator=gen)
    cache = KVCache(lean.config, slots=3, dtype=torch.float32)
    alone = KVCache(lean.config, slots=1, dtype=torch.float32)
    with torch.inference_mode():
        lean(a[:, :-1], torch.arange(29).view(1, -1), torch.tensor([2]), cache)
        lean(b[:, :-1], torch.arange(74).view(1, -1), torch.tensor([0]), cache)
        batched = lean(
            torch.cat([a[:, -1:], b[:, -1:]]),
            torch.tensor([[29], [74]]),
            torch.tensor([2, 0]),
            cache,
        )
        lean(b[:, :-1], torch.arange(74).view(1, -1), torch.tensor([0]), alone)
        single = lean(b[:, -1:], torch.tensor([[74]]), torch.tensor([0]), alone)
    torch.testing.assert_close(batched[1], single[0], rtol=1e-4, atol=1e-4)


def test_a_saved_prefix_restored_into_another_slot_continues_identically(models: tuple) -> None:
    _, lean = models
    ids = torch.randint(10, 300, (1, 40), generator=torch.Generator().manual_seed(3))
    cache = KVCache(lean.config, slots=2, dtype=torch.float32)
    with torch.inference_mode():
        lean(ids[:, :39], torch.arange(39).view(1, -1), torch.tensor([0]), cache)
        expected = lean(ids[:, 39:], torch.tensor([[39]]), torch.tensor([0]), cache)
        k, v = cache.read(0, 39)
        cache.write(1, k, v)
        restored = lean(ids[:, 39:], torch.tensor([[39]]), torch.tensor([1]), cache)
    torch.testing.assert_close(restored, expected)


def test_the_cache_grows_rows_and_positions_without_losing_or_shrinking(models: tuple) -> None:
    _, lean = models
    cache = KVCache(lean.config, slots=3, dtype=torch.float32, capacity=16)
    cache.ensure(1, 700)  # beyond the model's 512 positions: asked for, so given
    cache.k[:, 0, :, 650] = 1.0
    cache.ensure(3, 20)  # more rows, fewer positions: keeps the 700
    assert cache.slots == 3
    assert cache.capacity >= 700
    assert bool((cache.k[:, 0, :, 650] == 1.0).all())
    with pytest.raises(ValueError, match="beyond"):
        cache.ensure(4, 10)
