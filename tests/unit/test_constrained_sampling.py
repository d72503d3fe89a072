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
        self.ok = set(allowed)
        self.masks = 0

    def allows(self, token: int) -> bool:
        return token in self.ok

    def mask_(self, logits: torch.Tensor) -> torch.Tensor:
        self.masks += 1
        keep = torch.zeros(V, dtype=torch.bool)
        keep[list(self.ok)] = True
        return logits.masked_fill_(~keep, float("-inf"))


def greedy() -> TokenSampler:
    return TokenSampler(SamplingParams(temperature=0.0))


def test_free_rows_are_untouched_and_a_refused_argmax_gives_the_masked_argmax() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, V)
    order = [int(i) for i in logits[1].argsort(descending=True)]
    original = logits.clone()
    near: Any = Bits(order[5], order[9])  # found among the row's largest logits
    far: Any = Bits(order[-1])  # the smallest logit: only a mask finds it
    for refusing, masked in ((near, 0), (far, 1)):
        stats = MaskStats()
        logits = original.clone()
        tokens = choose_tokens(
            Model(), logits, [greedy(), greedy(), greedy()], lambda _: [], [None, refusing], stats
        )
        assert tokens[0] == int(original[0].argmax())
        assert tokens[2] == int(original[2].argmax())
        assert tokens[1] == (order[5] if refusing is near else order[-1])
        assert torch.equal(logits[0], original[0])
        assert torch.equal(logits[2], original[2])
        assert (stats.constrained_tokens, stats.masked_rows) == (1, masked)


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
    allowing: Any = Bits(3, 9, 40)
    for _ in range(20):
        logits = torch.randn(2, V)
        tokens = choose_tokens(Model(), logits, [greedy(), sampler], lambda _: [], [None, allowing])
        assert tokens[1] in allowing.ok


class Bits(Allowing):
    """``Allowing`` with the bit queries of a real constraint."""

    def allowed(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.tensor([int(i) in self.ok for i in ids], dtype=torch.bool)

    def allowed_count(self) -> int:
        return len(self.ok)


def test_a_top_k_row_keeps_its_allowed_candidates_or_is_masked_when_they_do_not_decide() -> None:
    torch.manual_seed(1)
    logits = torch.randn(1, V)
    order = [int(i) for i in logits[0].argsort(descending=True)]
    sampler = TokenSampler(SamplingParams(temperature=1.0, top_k=4, seed=2))
    # every allowed token is among the row's top 4: decided without a mask
    decided: Any = Bits(order[1], order[3])
    stats = MaskStats()
    for _ in range(10):
        (token,) = choose_tokens(Model(), logits.clone(), [sampler], lambda _: [], [decided], stats)
        assert token in decided.ok
    assert decided.masks == 0
    assert stats.masked_rows == 0
    # an allowed token far down the row: only a mask finds it
    far: Any = Bits(order[0], order[-1])
    for _ in range(10):
        (token,) = choose_tokens(Model(), logits.clone(), [sampler], lambda _: [], [far], stats)
        assert token in far.ok
    assert far.masks == 10
