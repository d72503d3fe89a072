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
    cache = KVCache(lean.config, slots=1, dtype=torch.float32)
    with torch.inference_mode():
        ours = lean(ids, torch.arange(150).view(1, -1), torch.tensor([0]), cache, last_only=False)
    torch.testing.assert_close(ours[0], reference_logits(reference, ids), rtol=1e-4, atol=1e-4)
    assert cache.capacity(0) >= 150


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
        cache.write(1, cache.read(0, 39), 39)
        restored = lean(ids[:, 39:], torch.tensor([[39]]), torch.tensor([1]), cache)
    torch.testing.assert_close(restored, expected)


def test_a_slot_grows_alone_keeping_what_it_holds_and_gives_its_memory_back(
    models: tuple,
) -> None:
    _, lean = models
    cache = KVCache(lean.config, slots=3, dtype=torch.float32, chunk=16)
    cache.ensure(0, 20)
    cache.ensure(1, 20)
    other = cache.slot_nbytes(1)
    global_layer = lean.config.sliding_layers.index(False)
    cache.layer(0, global_layer)[0][:, 10] = 1.0
    cache.ensure(0, 700)  # beyond the model's 512 positions: asked for, so given
    assert cache.capacity(0) >= 700
    assert cache.local_capacity(0) == cache.ring  # the sliding layers stop at their ring
    assert bool((cache.layer(0, global_layer)[0][:, 10] == 1.0).all())
    assert cache.slot_nbytes(1) == other  # the other slot did not grow
    assert cache.capacity(2) == 0  # nor did an unused one
    cache.release(0)
    assert cache.nbytes == other
    with pytest.raises(ValueError, match="beyond"):
        cache.ensure(3, 10)


def test_decoding_past_the_ring_matches_transformers(models: tuple) -> None:
    # A ring of the window (64) and 16 positions: it wraps several times over 300 tokens.
    reference, lean = models
    ids = torch.randint(10, 300, (1, 300), generator=torch.Generator().manual_seed(4))
    expected = reference_logits(reference, ids)
    cache = KVCache(lean.config, slots=2, dtype=torch.float32, chunk=16)
    assert cache.ring < 150
    slots = torch.tensor([1])
    with torch.inference_mode():
        prefill = lean(ids[:, :150], torch.arange(150).view(1, -1), slots, cache, last_only=False)
        torch.testing.assert_close(prefill[0], expected[:150], rtol=1e-4, atol=1e-4)
        for pos in range(150, 300):
            step = lean(ids[:, pos : pos + 1], torch.tensor([[pos]]), slots, cache)
            torch.testing.assert_close(step[0], expected[pos], rtol=1e-4, atol=1e-4)
    assert cache.local_capacity(1) == cache.ring


def test_a_snapshot_past_the_ring_serves_only_prefixes_whose_window_it_holds(
    models: tuple,
) -> None:
    _, lean = models
    ids = torch.randint(10, 300, (1, 200), generator=torch.Generator().manual_seed(5))
    cache = KVCache(lean.config, slots=2, dtype=torch.float32, chunk=16)
    with torch.inference_mode():
        lean(ids, torch.arange(200).view(1, -1), torch.tensor([0]), cache)
        snapshot = cache.read(0, 200)
        window = lean.config.sliding_window
        assert snapshot.local_from == 200 - cache.ring
        assert snapshot.serves(200)
        assert snapshot.serves(snapshot.local_from + window - 1)
        assert not snapshot.serves(snapshot.local_from + window - 2)
        assert not cache.holds_window(0, 200, snapshot.local_from + window - 2)
        prefix = snapshot.local_from + window  # restored into another slot, continued
        cache.write(1, snapshot, prefix)
        rest = torch.arange(prefix, 200).view(1, -1)
        restored = lean(ids[:, prefix:], rest, torch.tensor([1]), cache)
        fresh = KVCache(lean.config, slots=1, dtype=torch.float32, chunk=16)
        recomputed = lean(ids, torch.arange(200).view(1, -1), torch.tensor([0]), fresh)
    torch.testing.assert_close(restored, recomputed, rtol=1e-5, atol=1e-5)


def test_a_final_logit_cap_is_applied_as_transformers_applies_it(models: tuple) -> None:
    """Gemma 3 checkpoints have no final logit cap; a config that has one gets
    ``tanh(logits / cap) * cap`` (in place), with transformers' results and the out-of-place
    formula's bits."""
    import dataclasses

    reference, lean = models
    ids = torch.randint(10, 300, (1, 12), generator=torch.Generator().manual_seed(5))
    positions, slots = torch.arange(12).view(1, -1), torch.tensor([0])
    with torch.inference_mode():
        plain = lean(ids, positions, slots, KVCache(lean.config, slots=1, dtype=torch.float32))
    original = lean.config
    lean.config = dataclasses.replace(original, final_logit_softcapping=0.5)
    reference.config.final_logit_softcapping = 0.5
    try:
        with torch.inference_mode():
            capped = lean(ids, positions, slots, KVCache(lean.config, slots=1, dtype=torch.float32))
            expected = reference_logits(reference, ids)[-1]
    finally:
        lean.config = original
        reference.config.final_logit_softcapping = None
    assert capped.abs().max() <= 0.5
    assert torch.equal(capped, torch.tanh(plain / 0.5) * 0.5)
    torch.testing.assert_close(capped[0], expected, rtol=1e-4, atol=1e-5)
