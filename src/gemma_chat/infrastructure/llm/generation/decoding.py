"""The transformers generation steps: prefill the prompt once, then decode one token at a time.

Written as explicit steps (in the spirit of gpt-fast) rather than ``model.generate()`` so that a
step boundary is where streaming, stop sequences and cancellation are checked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from gemma_chat.infrastructure.llm.generation.constraints import TokenConstraint
from gemma_chat.infrastructure.llm.generation.sampling import TokenSampler

__all__ = ["Forward", "decode_one_token", "generate_scored_tokens", "generate_tokens", "prefill"]

Forward = Callable[..., Any]


def prefill(forward: Forward, input_ids: torch.Tensor, cache: Any) -> torch.Tensor:
    """Run the prompt ``input_ids`` [1, S] through the model: the last position's logits [V]."""
    out = forward(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1)
    logits: torch.Tensor = out.logits[0, -1]  # [V]
    return logits


def decode_one_token(forward: Forward, token: torch.Tensor, cache: Any) -> torch.Tensor:
    """One step for ``token`` [1, 1] with the cache of everything before it; logits [V]."""
    out = forward(input_ids=token, cache=cache, use_cache=True)
    logits: torch.Tensor = out.logits[0, -1]  # [V]
    return logits


def generate_tokens(
    forward: Forward,
    input_ids: torch.Tensor,
    cache: Any,
    sampler: TokenSampler,
    max_new_tokens: int,
    constraint: TokenConstraint | None = None,
) -> Iterator[int]:
    """Yield new token ids; the caller stops iterating on end-of-turn, stop text or cancel."""
    scored = generate_scored_tokens(forward, input_ids, cache, sampler, max_new_tokens, constraint)
    for token, _ in scored:
        yield token


def generate_scored_tokens(
    forward: Forward,
    input_ids: torch.Tensor,
    cache: Any,
    sampler: TokenSampler,
    max_new_tokens: int,
    constraint: TokenConstraint | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield new token ids, each with the logits [V] it was chosen from (for its log
    probability); the caller stops iterating on end-of-turn, stop text or cancel.

    ``constraint``: the answer's grammar, as a logits processor (the caller feeds it the
    tokens, through the job)."""
    seen = input_ids[0]  # [S]
    logits = prefill(forward, input_ids, cache)  # [V]
    for step in range(max_new_tokens):
        if constraint is not None:
            logits = constraint.mask_(logits.float())
        token = sampler(logits, seen)
        yield token, logits
        if step + 1 == max_new_tokens:
            return  # no forward pass for a token that would never be used
        next_ids = torch.tensor([[token]], device=input_ids.device)  # [1, 1]
        if sampler.params.repetition_penalty != 1.0:
            seen = torch.cat([seen, next_ids[0]])
        logits = decode_one_token(forward, next_ids, cache)
