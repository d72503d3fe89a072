"""choose_tokens with grammar constraints: only constrained rows are touched, a greedy row keeps
the batch argmax when its grammar allows it, and is masked only when not."""

from __future__ import annotations

from typing import Any

import torch

from gemma_chat.infrastructure.llm.engine.batch_sampling import MaskStats, choose_tokens
from gemma_chat.infrastructure.llm.generation.sampling import (
    SamplingParams,
    TokenSampler,
    finite_argmax,
)

V = 64


class Model:
    """The two batched choices choose_tokens asks of the engine's model."""

    def argmax(self, logits: torch.Tensor) -> list[int]:
        return finite_argmax(logits)

    def top_k(self, logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        values, ids = torch.topk(logits.float(), k, dim=-1)
        return values, ids


class Allowing:
    """A grammar that allows only ``allowed``."""

    def __init__(self, *allowed: int) -> None:
        self.allowed = set(allowed)
        self.masks = 0

    def allows(self, token: int) -> bool:
        return token in self.allowed

    def mask_(self, logits: torch.Tensor) -> torch.Tensor:
        self.masks += 1
        keep = torch.zeros(V, dtype=torch.bool)
        keep[list(self.allowed)] = True
        return logits.masked_fill_(~keep, float("-inf"))


def greedy() -> TokenSampler:
    return TokenSampler(SamplingParams(temperature=0.0))


def test_free_rows_are_untouched_and_a_refused_argmax_is_masked_away() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, V)
    best = int(logits[1].argmax())
    original = logits.clone()
    refusing = Allowing(7 if best != 7 else 8)
    stats = MaskStats()
    tokens = choose_tokens(
        Model(), logits, [greedy(), greedy(), greedy()], lambda _: [], [None, refusing], stats
    )
    assert tokens[0] == int(original[0].argmax())
    assert tokens[2] == int(original[2].argmax())
    assert tokens[1] in refusing.allowed
    assert torch.equal(logits[0], original[0])
    assert torch.equal(logits[2], original[2])
    assert (stats.constrained_tokens, stats.masked_rows) == (1, 1)


def test_a_greedy_row_whose_argmax_is_allowed_is_not_masked() -> None:
    logits = torch.randn(2, V)
    best = int(logits[0].argmax())
    allowing: Any = Allowing(best, (best + 1) % V)
    stats = MaskStats()
    tokens = choose_tokens(Model(), logits, [greedy(), greedy()], lambda _: [], [allowing], stats)
    assert tokens[0] == best
    assert allowing.masks == 0
    assert stats.masked_rows == 0


def test_a_sampling_row_draws_only_allowed_tokens() -> None:
    sampler = TokenSampler(SamplingParams(temperature=1.0, top_k=10, seed=3))
    allowing: Any = Allowing(3, 9, 40)
    for _ in range(20):
        logits = torch.randn(2, V)
        tokens = choose_tokens(Model(), logits, [greedy(), sampler], lambda _: [], [None, allowing])
        assert tokens[1] in allowing.allowed
