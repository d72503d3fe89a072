"""Choosing the next tokens of a whole batch at once: one argmax over the greedy rows, one top-k
over the rows that sample from their top k."""

from __future__ import annotations

from collections.abc import Callable

import torch

from gemma_chat.domain.errors import BrokenLogitsError
from gemma_chat.infrastructure.llm.engine.model import Gemma3Model, select_rows
from gemma_chat.infrastructure.llm.generation.sampling import TokenSampler

__all__ = ["choose_tokens"]

# Rows sampling from at most this many candidates get them from the model's batched top-k;
# larger top_k values go through the sampler's own torch.topk.
_TOP_K_ROWS = 1024


def choose_tokens(
    model: Gemma3Model,
    logits: torch.Tensor,
    samplers: list[TokenSampler | None],
    seen: Callable[[int], list[int]],
) -> list[int | None]:
    """The rows' next tokens, from one argmax over the greedy rows and one top-k over the
    rows that sample from their top k (a repetition penalty applied to their ``logits``
    rows in place first); None where a row needs the whole-row sampler (no top-k), -1 where
    its logits are broken."""
    tokens: list[int | None] = [None] * len(samplers)
    greedy: list[int] = []
    top: list[tuple[int, TokenSampler]] = []
    for i, sampler in enumerate(samplers):
        if sampler is None:
            continue
        if sampler.params.temperature == 0.0:
            greedy.append(i)
        elif 0 < sampler.params.top_k <= min(_TOP_K_ROWS, logits.shape[-1] - 1):
            top.append((i, sampler))
        else:
            continue
        if sampler.params.repetition_penalty != 1.0:
            sampler.penalise_(logits[i], torch.tensor(seen(i), dtype=torch.long))
    if greedy:
        for i, token in zip(greedy, model.argmax(select_rows(logits, greedy)), strict=True):
            tokens[i] = token  # -1: broken logits, failed by _advance
    if top:
        k = max(sampler.params.top_k for _, sampler in top)
        values, ids = model.top_k(select_rows(logits, [i for i, _ in top]), k)  # [R, k]
        for row, (i, sampler) in enumerate(top):
            own = sampler.params.top_k  # the first ``own`` of the k, largest first
            try:
                tokens[i] = sampler.choose(values[row, :own], ids[row, :own])
            except BrokenLogitsError:
                tokens[i] = -1  # failed by _advance, for this request alone
    return tokens
