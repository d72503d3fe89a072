"""Choosing the next tokens of a whole batch at once: one argmax over the greedy rows, one top-k
over the rows that sample from their top k; a constrained row's logits masked by its grammar."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from gemma_chat.domain.errors import BrokenLogitsError
from gemma_chat.infrastructure.llm.engine.model import Gemma3Model, select_rows
from gemma_chat.infrastructure.llm.generation.constraints import TokenConstraint
from gemma_chat.infrastructure.llm.generation.sampling import TokenSampler, finite_argmax

__all__ = ["MaskStats", "choose_tokens"]


@dataclass
class MaskStats:
    """What constrained decoding cost: tokens chosen under a grammar, rows masked whole (a
    greedy row whose argmax the grammar accepts needs no mask), time spent on grammars."""

    constrained_tokens: int = 0
    masked_rows: int = 0
    mask_seconds: float = 0.0


# Rows sampling from at most this many candidates get them from the model's batched top-k;
# larger top_k values go through the sampler's own torch.topk.
_TOP_K_ROWS = 1024


def choose_tokens(
    model: Gemma3Model,
    logits: torch.Tensor,
    samplers: list[TokenSampler | None],
    seen: Callable[[int], list[int]],
    constraints: Sequence[TokenConstraint | None] = (),
    stats: MaskStats | None = None,
) -> list[int | None]:
    """The rows' next tokens, from one argmax over the greedy rows and one top-k over the
    rows that sample from their top k (a repetition penalty applied to their ``logits``
    rows in place first); None where a row needs the whole-row sampler (no top-k), -1 where
    its logits are broken.

    A row with a constraint (``constraints[i]``) takes only a token its grammar allows: a
    sampling row's logits are masked in place first; a greedy row keeps the batch argmax when
    the grammar allows it (the argmax of the masked row then is the same token) and is masked
    and searched again only when not.
    """
    tokens: list[int | None] = [None] * len(samplers)
    greedy: list[int] = []
    top: list[tuple[int, TokenSampler]] = []
    stats = stats if stats is not None else MaskStats()
    started = time.perf_counter()
    for i, sampler in enumerate(samplers):
        if sampler is None:
            continue
        constraint = constraints[i] if i < len(constraints) else None
        if constraint is not None:
            stats.constrained_tokens += 1
            if sampler.params.temperature != 0.0:
                constraint.mask_(logits[i])
                stats.masked_rows += 1
        if sampler.params.temperature == 0.0:
            greedy.append(i)
        elif 0 < sampler.params.top_k <= min(_TOP_K_ROWS, logits.shape[-1] - 1):
            top.append((i, sampler))
        else:
            continue
        if sampler.params.repetition_penalty != 1.0:
            sampler.penalise_(logits[i], torch.tensor(seen(i), dtype=torch.long))
    stats.mask_seconds += time.perf_counter() - started
    if greedy:
        for i, token in zip(greedy, model.argmax(select_rows(logits, greedy)), strict=True):
            tokens[i] = token  # -1: broken logits, failed by _advance
            constraint = constraints[i] if i < len(constraints) else None
            if constraint is None or token < 0:
                continue
            started = time.perf_counter()
            if not constraint.allows(token):
                constraint.mask_(logits[i])
                (tokens[i],) = finite_argmax(logits[i].view(1, -1))
                stats.masked_rows += 1
            stats.mask_seconds += time.perf_counter() - started
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
