"""The token loop: prefill the prompt once, then decode one token at a time.

Written as explicit steps (in the spirit of gpt-fast) rather than ``model.generate()`` so that a
step boundary is where streaming, stop sequences and cancellation are checked.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from gemma_chat.domain.errors import BrokenLogitsError

__all__ = [
    "IncrementalDetokenizer",
    "SamplingParams",
    "TokenSampler",
    "decode_one_token",
    "finite_argmax",
    "generate_tokens",
    "prefill",
]

Forward = Callable[..., Any]


def finite_argmax(logits: torch.Tensor) -> list[int]:
    """Each row's first largest value's index (as ``torch.argmax``) for logits [R, V]; -1 for
    a row with a NaN or an infinite top."""
    best, at = logits.float().max(dim=-1)  # a NaN is the max
    return [
        int(i) if ok else -1 for i, ok in zip(at.tolist(), best.isfinite().tolist(), strict=True)
    ]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None


class TokenSampler:
    """Chooses the next token from logits: greedy at temperature 0, else filtered sampling."""

    def __init__(self, params: SamplingParams, device: torch.device | str = "cpu") -> None:
        self.params = params
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(params.seed if params.seed is not None else secrets.randbits(63))

    def __call__(self, logits: torch.Tensor, seen: torch.Tensor) -> int:
        """``logits``: [V] for the next position; ``seen``: [T] token ids so far."""
        if self.params.temperature == 0.0:
            (token,) = finite_argmax(self.penalised(logits.float(), seen).view(1, -1))
            if token < 0:
                raise BrokenLogitsError()
            return token
        weights, ids = self.distribution(logits, seen)
        index = self._draw(weights)
        return int(ids[index]) if ids is not None else index

    def distribution(
        self, logits: torch.Tensor, seen: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What a sampled token is drawn from: weights [N] proportional to the probabilities
        (temperature, then top-k, then top-p on what is left), and the tokens they belong to
        (None: the whole row, in order)."""
        p = self.params
        logits = self.penalised(logits.float(), seen)
        if 0 < p.top_k < logits.numel():
            # Exactly k candidates (of logits tied with the k-th, the first ones).
            values, ids = torch.topk(logits, p.top_k)  # [k], largest first
            return self._candidates(values), ids
        probs = torch.softmax(logits / p.temperature, dim=-1)  # [V]
        if p.top_p >= 1.0:
            return probs, None
        # The fewest most likely tokens that reach top_p, from a top-k large enough to hold
        # them (sorting the whole vocabulary took ~20 ms a token).
        k = 64
        while True:
            top, ids = torch.topk(probs, min(k, probs.numel()))  # [k], largest first
            if ids.numel() == probs.numel() or float(top.sum()) >= p.top_p:
                break
            k *= 8
        return self._nucleus(top), ids

    def penalised(self, logits: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        """``logits`` [V] with the repetition penalty applied to the ``seen`` tokens."""
        if self.params.repetition_penalty == 1.0 or not seen.numel():
            return logits
        return self.penalise_(logits.clone(), seen)

    def penalise_(self, logits: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        """``penalised`` in place: only the ``seen`` entries of ``logits`` [V] are touched."""
        p = self.params
        if p.repetition_penalty == 1.0 or not seen.numel():
            return logits
        # As in CTRL / transformers: make every token already seen less likely.
        previous = logits[seen]
        logits[seen] = torch.where(
            previous > 0, previous / p.repetition_penalty, previous * p.repetition_penalty
        )
        return logits

    def choose(self, values: torch.Tensor, ids: torch.Tensor) -> int:
        """A token from the row's ``top_k`` largest logits (``values`` [k], largest first, and
        their ``ids`` [k]): the same distribution as sampling from the whole row."""
        return int(ids[self._draw(self._candidates(values))])

    def _candidates(self, values: torch.Tensor) -> torch.Tensor:
        """Weights [k] for the top-k logits ``values`` [k] (largest first)."""
        return self._nucleus(torch.softmax(values.float() / self.params.temperature, dim=-1))

    def _nucleus(self, probs: torch.Tensor) -> torch.Tensor:
        """``probs`` [k] (largest first) without the tokens past the top_p mass: a token is
        dropped once the mass before it already reaches top_p (the first is always kept)."""
        if self.params.top_p >= 1.0:
            return probs
        return probs * ((probs.cumsum(dim=-1) - probs) < self.params.top_p)

    def _draw(self, weights: torch.Tensor) -> int:
        """An index drawn with probability proportional to ``weights`` [N] (by inverse CDF:
        ``torch.multinomial`` took ~6 ms over a whole vocabulary)."""
        cdf = weights.cumsum(dim=-1)  # [N]
        if not 0.0 < float(cdf[-1]) < float("inf"):  # NaN, or no token left with a probability
            raise BrokenLogitsError()
        u = torch.rand(1, generator=self.generator, device=cdf.device) * cdf[-1]
        index = torch.searchsorted(cdf, u, right=True)
        return min(int(index.item()), weights.numel() - 1)


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
) -> Iterator[int]:
    """Yield new token ids; the caller stops iterating on end-of-turn, stop text or cancel."""
    seen = input_ids[0]  # [S]
    logits = prefill(forward, input_ids, cache)  # [V]
    for step in range(max_new_tokens):
        token = sampler(logits, seen)
        yield token
        if step + 1 == max_new_tokens:
            return  # no forward pass for a token that would never be used
        next_ids = torch.tensor([[token]], device=input_ids.device)  # [1, 1]
        if sampler.params.repetition_penalty != 1.0:
            seen = torch.cat([seen, next_ids[0]])
        logits = decode_one_token(forward, next_ids, cache)


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas, never splitting a UTF-8 character.

    A token can hold part of a multi-byte character; its text is held back until a later token
    completes the character (the decoded text then no longer ends in U+FFFD). Each step decodes
    only a short window of recent tokens (as TGI and vLLM do), not the whole answer again: the
    window starts a token before the new ones, so that a leading space the tokenizer drops at
    the start of a text is kept.
    """

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._emitted = ""
        self._prefix = 0  # the window's first token
        self._read = 0  # tokens before this one have been emitted

    @property
    def text(self) -> str:
        return self._emitted

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        """What is left when generation ends; an incomplete last character is dropped."""
        return self._advance(final=True)

    def _advance(self, *, final: bool) -> str:
        before = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        if final:
            text = text.rstrip("\ufffd")
        elif text.endswith("\ufffd"):
            return ""  # a character still incomplete: wait for the next token
        if len(text) <= len(before) or not text.startswith(before):
            return ""
        delta = text[len(before) :]
        self._emitted += delta
        self._prefix, self._read = self._read, len(self._ids)
        return delta
