"""Generation: sampling, prefill/decode steps and incremental detokenization."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gemma_chat.infrastructure.llm.generation.decoding import (
    decode_one_token,
    generate_tokens,
    prefill,
)
from gemma_chat.infrastructure.llm.generation.detokenizer import IncrementalDetokenizer
from gemma_chat.infrastructure.llm.generation.sampling import SamplingParams, TokenSampler

NO_HISTORY = torch.tensor([], dtype=torch.long)
FLAT = torch.tensor([1.0, 1.1, 0.9, 1.05, 0.95, 1.0, 1.02, 0.98])  # 8 near-equal logits


def sample_many(sampler: TokenSampler, logits: torch.Tensor, n: int) -> list[int]:
    return [sampler(logits, NO_HISTORY) for _ in range(n)]


# -- TokenSampler ------------------------------------------------------------------------------


def test_greedy_decoding_picks_the_largest_logit() -> None:
    sampler = TokenSampler(SamplingParams(temperature=0.0))
    assert sampler(torch.tensor([0.1, 3.0, -1.0, 2.9]), NO_HISTORY) == 1
    assert sampler(torch.tensor([5.0, 3.0, -1.0, 2.9]), NO_HISTORY) == 0


def test_greedy_decoding_ignores_the_seed() -> None:
    logits = torch.tensor([0.0, 0.5, 2.0, 1.9])
    picks = {TokenSampler(SamplingParams(seed=s))(logits, NO_HISTORY) for s in range(5)}
    assert picks == {2}


def test_greedy_decoding_accepts_half_precision_logits() -> None:
    sampler = TokenSampler(SamplingParams())
    assert sampler(torch.tensor([0.0, 2.0, 1.0], dtype=torch.bfloat16), NO_HISTORY) == 1


def test_sampling_with_a_seed_is_reproducible() -> None:
    params = SamplingParams(temperature=1.0, seed=1234)
    first = sample_many(TokenSampler(params), FLAT, 30)
    second = sample_many(TokenSampler(params), FLAT, 30)
    assert first == second
    assert len(set(first)) > 1  # it really sampled


def test_different_seeds_can_give_different_samples() -> None:
    runs = {
        tuple(sample_many(TokenSampler(SamplingParams(temperature=1.0, seed=s)), FLAT, 20))
        for s in range(4)
    }
    assert len(runs) > 1


def test_sampling_without_a_seed_returns_a_valid_token() -> None:
    sampler = TokenSampler(SamplingParams(temperature=1.0))
    assert all(0 <= t < len(FLAT) for t in sample_many(sampler, FLAT, 20))


def test_seed_zero_is_a_real_seed() -> None:
    params = SamplingParams(temperature=1.0, seed=0)
    assert sample_many(TokenSampler(params), FLAT, 20) == sample_many(
        TokenSampler(params), FLAT, 20
    )


def test_top_k_of_one_always_picks_the_largest_logit() -> None:
    sampler = TokenSampler(SamplingParams(temperature=2.0, top_k=1, seed=7))
    logits = torch.tensor([1.0, 1.2, 0.9, 1.1])
    assert set(sample_many(sampler, logits, 50)) == {1}


def test_top_k_keeps_only_the_k_largest_logits() -> None:
    sampler = TokenSampler(SamplingParams(temperature=2.0, top_k=2, seed=7))
    logits = torch.tensor([1.0, 1.2, 0.9, 1.1, 0.0])
    assert set(sample_many(sampler, logits, 200)) == {1, 3}


def test_a_tiny_top_p_keeps_only_the_top_token() -> None:
    sampler = TokenSampler(SamplingParams(temperature=1.5, top_p=1e-6, seed=3))
    logits = torch.tensor([0.2, 0.1, 0.3, 0.25])
    assert set(sample_many(sampler, logits, 50)) == {2}


def test_top_p_keeps_the_tokens_that_reach_the_mass() -> None:
    # Probabilities about 0.5, 0.3, 0.2: top_p=0.7 keeps the first two (0.5 < 0.7 <= 0.8).
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    sampler = TokenSampler(SamplingParams(temperature=1.0, top_p=0.7, seed=11))
    assert set(sample_many(sampler, logits, 200)) == {0, 1}


def test_top_p_over_a_large_vocabulary_keeps_exactly_the_nucleus() -> None:
    # The nucleus (~500 of 5,000 tokens) is larger than the first top-k the sampler tries.
    logits = torch.linspace(4.0, -4.0, 5000)
    probs = torch.softmax(logits, dim=-1)
    nucleus = int(((probs.cumsum(-1) - probs) < 0.6).sum())
    assert nucleus > 64
    sampler = TokenSampler(SamplingParams(temperature=1.0, top_p=0.6, seed=5))
    drawn = sample_many(sampler, logits, 400)
    assert max(drawn) < nucleus
    assert max(drawn) > 64


def test_sampling_follows_the_softmax_of_the_logits() -> None:
    logits = torch.log(torch.tensor([0.6, 0.3, 0.1]))
    sampler = TokenSampler(SamplingParams(temperature=1.0, seed=2))
    counts = Counter(sample_many(sampler, logits, 3000))
    assert [round(counts[i] / 3000, 1) for i in range(3)] == [0.6, 0.3, 0.1]


@pytest.mark.parametrize("penalty", [1.0, 1.5])
def test_choose_from_the_top_k_candidates_draws_as_the_whole_row_would(penalty: float) -> None:
    # The engine penalises its logits rows in place, takes their top k, then chooses.
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(9)) * 2
    seen = torch.topk(logits, 30).indices[::3]  # some of the likeliest tokens were seen
    params = SamplingParams(
        temperature=0.8, top_k=40, top_p=0.9, repetition_penalty=penalty, seed=4
    )
    whole, candidates = TokenSampler(params), TokenSampler(params)
    row = candidates.penalise_(logits.clone(), seen)
    values, ids = torch.topk(row, 40)
    assert [whole(logits, seen) for _ in range(50)] == [
        candidates.choose(values, ids) for _ in range(50)
    ]


def reference_probabilities(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution as the sampler computed it before it drew from top-k candidates: mask
    below the k-th logit, sort the whole row for top-p, softmax."""
    logits = logits / params.temperature
    if 0 < params.top_k < logits.numel():
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= params.top_p
        logits = logits.scatter(0, order, ordered.masked_fill(drop, float("-inf")))
    return torch.softmax(logits, dim=-1)


@pytest.mark.parametrize("vocabulary", [10, 300, 5000])
@pytest.mark.parametrize("top_k", [0, 1, 5, 64, 10**6])
@pytest.mark.parametrize("top_p", [1.0, 0.95, 0.5, 1e-9])
def test_the_distribution_is_the_masked_softmax_of_temperature_top_k_then_top_p(
    vocabulary: int, top_k: int, top_p: float
) -> None:
    logits = torch.randn(vocabulary, generator=torch.Generator().manual_seed(vocabulary)) * 3
    params = SamplingParams(temperature=0.7, top_k=top_k, top_p=top_p, seed=1)
    weights, ids = TokenSampler(params).distribution(logits, NO_HISTORY)
    probs = torch.zeros(vocabulary)
    probs[ids if ids is not None else torch.arange(vocabulary)] = weights / weights.sum()
    assert torch.allclose(probs, reference_probabilities(logits, params), atol=1e-6)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("bad", [float("nan"), float("-inf")])
def test_logits_without_a_finite_probability_are_an_error(bad: float, temperature: float) -> None:
    sampler = TokenSampler(SamplingParams(temperature=temperature, seed=1))
    with pytest.raises(ValueError, match="no finite probability"):
        sampler(torch.full((50,), bad), NO_HISTORY)


def test_repetition_penalty_steers_greedy_decoding_away_from_seen_tokens() -> None:
    logits = torch.tensor([2.0, 1.9, 0.0])
    seen = torch.tensor([0])
    assert TokenSampler(SamplingParams())(logits, seen) == 0
    assert TokenSampler(SamplingParams(repetition_penalty=1.5))(logits, seen) == 1


def test_repetition_penalty_also_lowers_negative_logits_of_seen_tokens() -> None:
    logits = torch.tensor([-1.0, -1.2])
    sampler = TokenSampler(SamplingParams(repetition_penalty=1.5))
    assert sampler(logits, torch.tensor([0])) == 1  # -1.0 * 1.5 = -1.5 < -1.2


def test_repetition_penalty_makes_a_seen_token_less_likely_when_sampling() -> None:
    logits = torch.tensor([1.0, 1.0])
    seen = torch.tensor([0, 0])  # a token seen twice is penalised once
    plain = TokenSampler(SamplingParams(temperature=1.0, seed=5))
    penalised = TokenSampler(SamplingParams(temperature=1.0, seed=5, repetition_penalty=2.0))
    plain_zeros = Counter(plain(logits, seen) for _ in range(400))[0]
    penalised_zeros = Counter(penalised(logits, seen) for _ in range(400))[0]
    # Without the penalty token 0 has p = 0.5, with it p = 1 / (1 + e^0.5) ~ 0.38.
    assert penalised_zeros < plain_zeros
    assert 110 < penalised_zeros < 190


def test_repetition_penalty_leaves_unseen_tokens_alone() -> None:
    sampler = TokenSampler(SamplingParams(repetition_penalty=3.0))
    assert sampler(torch.tensor([0.5, 2.0, 1.0]), torch.tensor([0])) == 1


# -- prefill / decode_one_token / generate_tokens ---------------------------------------------


@dataclass
class FakeOutput:
    logits: torch.Tensor  # [1, S, V]


class CountingModel:
    """A fake causal LM over ``vocab`` tokens: after token t it strongly prefers t + 1."""

    def __init__(self, vocab: int = 16) -> None:
        self.vocab = vocab
        self.calls: list[dict[str, Any]] = []

    def __call__(self, *, input_ids: torch.Tensor, **kwargs: Any) -> FakeOutput:
        self.calls.append({"input_ids": input_ids.clone(), **kwargs})
        length = input_ids.shape[1]
        logits = torch.zeros(1, length, self.vocab)
        for position in range(length):
            logits[0, position, (int(input_ids[0, position]) + 1) % self.vocab] = 10.0
        return FakeOutput(logits)


class FixedModel:
    """A fake LM whose next-token logits never change."""

    def __init__(self, logits: list[float]) -> None:
        self.logits = torch.tensor(logits)
        self.calls = 0

    def __call__(self, *, input_ids: torch.Tensor, **kwargs: Any) -> FakeOutput:
        self.calls += 1
        return FakeOutput(self.logits.expand(1, input_ids.shape[1], -1).clone())


def greedy() -> TokenSampler:
    return TokenSampler(SamplingParams())


def test_prefill_runs_the_whole_prompt_and_returns_the_last_logits() -> None:
    model = CountingModel()
    cache = object()
    logits = prefill(model, torch.tensor([[3, 4, 5]]), cache)
    assert logits.shape == (model.vocab,)
    assert int(torch.argmax(logits)) == 6
    (call,) = model.calls
    assert call["input_ids"].tolist() == [[3, 4, 5]]
    assert call["cache"] is cache
    assert call["use_cache"] is True
    assert call["logits_to_keep"] == 1


def test_decode_one_token_runs_one_token_with_the_cache() -> None:
    model = CountingModel()
    cache = object()
    logits = decode_one_token(model, torch.tensor([[9]]), cache)
    assert int(torch.argmax(logits)) == 10
    (call,) = model.calls
    assert call["input_ids"].tolist() == [[9]]
    assert call["cache"] is cache


def test_generation_yields_exactly_max_new_tokens() -> None:
    model = CountingModel()
    tokens = list(generate_tokens(model, torch.tensor([[1, 2]]), None, greedy(), 5))
    assert tokens == [3, 4, 5, 6, 7]


def test_no_forward_pass_is_made_after_the_last_token() -> None:
    model = CountingModel()
    list(generate_tokens(model, torch.tensor([[1, 2]]), None, greedy(), 3))
    # One prefill, then one step for each token but the last.
    assert [c["input_ids"].tolist() for c in model.calls] == [[[1, 2]], [[3]], [[4]]]


def test_a_single_new_token_needs_only_the_prefill() -> None:
    model = CountingModel()
    assert list(generate_tokens(model, torch.tensor([[7]]), None, greedy(), 1)) == [8]
    assert len(model.calls) == 1


def test_every_step_gets_the_same_cache() -> None:
    model = CountingModel()
    cache = object()
    list(generate_tokens(model, torch.tensor([[0]]), cache, greedy(), 4))
    assert all(call["cache"] is cache for call in model.calls)


def test_a_consumer_that_stops_early_stops_the_forward_passes() -> None:
    model = CountingModel()
    tokens = generate_tokens(model, torch.tensor([[0]]), None, greedy(), 100)
    assert next(tokens) == 1
    assert next(tokens) == 2
    tokens.close()
    assert len(model.calls) == 2


def test_generation_penalises_the_tokens_it_generated_itself() -> None:
    model = FixedModel([5.0, 4.0, 3.0, 2.0])
    sampler = TokenSampler(SamplingParams(repetition_penalty=10.0))
    tokens = list(generate_tokens(model, torch.tensor([[0]]), None, sampler, 3))
    # 0 is in the prompt; 1 and then 2 are penalised once generated.
    assert tokens == [1, 2, 3]


def test_without_a_penalty_the_same_token_repeats() -> None:
    model = FixedModel([5.0, 4.0, 3.0])
    tokens = list(generate_tokens(model, torch.tensor([[0]]), None, greedy(), 3))
    assert tokens == [0, 0, 0]


# -- IncrementalDetokenizer --------------------------------------------------------------------


def byte_decode(ids: list[int]) -> str:
    """A byte-level tokenizer: every token is one byte of UTF-8."""
    return bytes(ids).decode("utf-8", errors="replace")


def byte_tokens(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def test_ascii_tokens_come_out_one_delta_each() -> None:
    detokenizer = IncrementalDetokenizer(byte_decode)
    assert [detokenizer.push(t) for t in byte_tokens("hi!")] == ["h", "i", "!"]
    assert detokenizer.text == "hi!"


def test_a_character_split_over_tokens_is_emitted_whole_in_one_delta() -> None:
    detokenizer = IncrementalDetokenizer(byte_decode)
    deltas = [detokenizer.push(t) for t in byte_tokens("a😀")]  # 1 + 4 bytes
    assert deltas == ["a", "", "", "", "😀"]


def test_a_split_character_never_shows_as_a_replacement_character() -> None:
    text = "héllo — 日本語 😀 wörld"
    detokenizer = IncrementalDetokenizer(byte_decode)
    deltas = [detokenizer.push(t) for t in byte_tokens(text)]
    assert not any("\ufffd" in d for d in deltas)
    assert "".join(deltas) + detokenizer.flush() == text


def test_tokens_of_several_bytes_are_decoded_too() -> None:
    # A token id here stands for a run of bytes, as in a BPE vocabulary.
    vocab = {1: b"caf", 2: b"\xc3", 3: b"\xa9 ", 4: b"ok"}

    def decode(ids: list[int]) -> str:
        return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")

    detokenizer = IncrementalDetokenizer(decode)
    assert [detokenizer.push(t) for t in [1, 2, 3, 4]] == ["caf", "", "é ", "ok"]


def test_flush_drops_an_incomplete_last_character() -> None:
    detokenizer = IncrementalDetokenizer(byte_decode)
    for token in [*byte_tokens("ok"), *"€".encode()[:2]]:
        detokenizer.push(token)
    assert detokenizer.flush() == ""
    assert detokenizer.text == "ok"


def test_flush_after_complete_text_adds_nothing() -> None:
    detokenizer = IncrementalDetokenizer(byte_decode)
    for token in byte_tokens("done ✓"):
        detokenizer.push(token)
    assert detokenizer.flush() == ""
    assert detokenizer.text == "done ✓"


def test_text_after_an_invalid_byte_is_still_emitted() -> None:
    detokenizer = IncrementalDetokenizer(byte_decode)
    deltas = [detokenizer.push(t) for t in [0x61, 0xFF, 0x62]]
    assert "".join(deltas) == "a\ufffdb"


@settings(max_examples=100, deadline=None, database=None)
@given(
    text=st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\ufffd"), max_size=30)
)
def test_byte_deltas_always_join_to_the_text(text: str) -> None:
    detokenizer = IncrementalDetokenizer(byte_decode)
    deltas = [detokenizer.push(t) for t in byte_tokens(text)]
    assert not any("\ufffd" in d for d in deltas)
    assert "".join(deltas) + detokenizer.flush() == text


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_a_truncated_emoji_at_the_end_is_dropped_whatever_its_length(cut: int) -> None:
    detokenizer = IncrementalDetokenizer(byte_decode)
    deltas = [detokenizer.push(t) for t in [*byte_tokens("x"), *"😀".encode()[:cut]]]
    assert "".join(deltas) + detokenizer.flush() == "x"


def test_zero_new_tokens_yield_nothing() -> None:
    assert list(generate_tokens(CountingModel(), torch.tensor([[1]]), None, greedy(), 0)) == []
