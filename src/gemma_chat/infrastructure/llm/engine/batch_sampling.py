"""Choosing the next tokens of a whole batch at once: one argmax over the greedy rows, one top-k
over the rows that sample from their top k; a constrained row's logits masked by its grammar."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from gemma_chat.domain.errors import BrokenLogitsError
from gemma_chat.infrastructure.llm.engine.model import select_rows
from gemma_chat.infrastructure.llm.engine.text_models import TextModel
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
    model: TextModel,
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

    A row with a constraint (``constraints[i]``) takes only a token its grammar allows, and is
    masked whole only when needed: a greedy row keeps the batch argmax when the grammar allows
    it (the argmax of the masked row then is the same token); a top-k row keeps the allowed
    ones among its batched top-k candidates when they are provably the masked row's top k
    (``_allowed_top_k``); a row sampled from the whole row is masked in place first.
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
        if sampler.params.temperature == 0.0:
            greedy.append(i)
        elif 0 < sampler.params.top_k <= min(_TOP_K_ROWS, logits.shape[-1] - 1):
            top.append((i, sampler))
        else:
            if constraint is not None:  # sampled from the whole row, in _advance: masked whole
                constraint.mask_(logits[i])
                stats.masked_rows += 1
            continue
        if sampler.params.repetition_penalty != 1.0:
            sampler.penalise_(logits[i], torch.tensor(seen(i), dtype=torch.long))
    stats.mask_seconds += time.perf_counter() - started
    if greedy:
        refused: list[int] = []
        for i, token in zip(greedy, model.argmax(select_rows(logits, greedy)), strict=True):
            tokens[i] = token  # -1: broken logits, failed by _advance
            constraint = constraints[i] if i < len(constraints) else None
            if constraint is None or token < 0:
                continue
            started = time.perf_counter()
            if not constraint.allows(token):
                refused.append(i)
            stats.mask_seconds += time.perf_counter() - started
        if refused:
            started = time.perf_counter()
            _first_allowed(model, logits, refused, constraints, tokens, stats)
            stats.mask_seconds += time.perf_counter() - started
    if top:
        k = max(sampler.params.top_k for _, sampler in top)
        values, ids = model.top_k(select_rows(logits, [i for i, _ in top]), k)  # [R, k]
        for row, (i, sampler) in enumerate(top):
            own = sampler.params.top_k  # the first ``own`` of the k, largest first
            constraint = constraints[i] if i < len(constraints) else None
            chosen_values, chosen_ids = values[row, :own], ids[row, :own]
            try:
                if constraint is not None:
                    started = time.perf_counter()
                    chosen_values, chosen_ids, masked = _allowed_top_k(
                        model, constraint, values[row], ids[row], own, logits[i]
                    )
                    stats.masked_rows += masked
                    stats.mask_seconds += time.perf_counter() - started
                tokens[i] = sampler.choose(chosen_values, chosen_ids)
            except BrokenLogitsError:
                tokens[i] = -1  # failed by _advance, for this request alone
    return tokens


# A greedy row whose argmax the grammar refuses looks for the first allowed token among this
# many of its largest logits (one batched top-k) before it is masked whole.
_GREEDY_CANDIDATES = 256


def _first_allowed(
    model: TextModel,
    logits: torch.Tensor,
    rows: list[int],
    constraints: Sequence[TokenConstraint | None],
    tokens: list[int | None],
    stats: MaskStats,
) -> None:
    """The masked argmax of each greedy row in ``rows`` (whose argmax its grammar refused):
    the first allowed token among the row's largest logits, which is the masked row's argmax;
    the row masked and searched whole when none of them is allowed."""
    k = min(_GREEDY_CANDIDATES, logits.shape[-1] - 1)
    _, ids = model.top_k(select_rows(logits, rows), k)  # [R, k], largest first
    for row, i in enumerate(rows):
        constraint = constraints[i]
        assert constraint is not None
        allowed = constraint.allowed(ids[row]).nonzero().view(-1)
        if allowed.numel():
            tokens[i] = int(ids[row, int(allowed[0])])
            continue
        constraint.mask_(logits[i])
        (tokens[i],) = finite_argmax(logits[i].view(1, -1))
        stats.masked_rows += 1


def _allowed_top_k(
    model: TextModel,
    constraint: TokenConstraint,
    values: torch.Tensor,
    ids: torch.Tensor,
    own: int,
    row: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The ``own`` largest logits among the tokens the grammar allows, and how many rows were
    masked whole (0 or 1), from the row's unconstrained top candidates (``values``, ``ids``,
    largest first) when they decide it: an allowed token outside them is smaller than all of
    them, so when ``own`` of them are allowed, or every allowed token is among them, they are
    the masked row's top ``own``. Otherwise more candidates are asked for, and failing those
    the row is masked and searched whole."""
    for attempt in range(2):
        keep = constraint.allowed(ids)
        count = int(keep.sum())
        if count and (count >= own or count == constraint.allowed_count()):
            chosen = keep.nonzero().view(-1)[:own]
            return values[chosen], ids[chosen], 0
        if attempt == 0 and row.shape[-1] > _GREEDY_CANDIDATES:  # more candidates, then a mask
            more_values, more_ids = model.top_k(row.view(1, -1), _GREEDY_CANDIDATES)
            values, ids = more_values[0], more_ids[0]
    constraint.mask_(row)
    top_values, top_ids = torch.topk(row.float(), min(own, row.shape[-1]))
    return top_values, top_ids, 1
