"""Choosing the next token from logits: greedy (``finite_argmax``) or sampled (``TokenSampler``
with temperature, top-k, top-p and a repetition penalty), for every generator."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import torch

from gemma_chat.domain.errors import BrokenLogitsError

__all__ = ["SamplingParams", "TokenSampler", "finite_argmax"]


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
        # them: sorting the whole vocabulary costs more than a decode step (DEVELOPMENT.md).
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
        ``torch.multinomial`` over a whole vocabulary is far slower; DEVELOPMENT.md)."""
        cdf = weights.cumsum(dim=-1)  # [N]
        if not 0.0 < float(cdf[-1]) < float("inf"):  # NaN, or no token left with a probability
            raise BrokenLogitsError()
        u = torch.rand(1, generator=self.generator, device=cdf.device) * cdf[-1]
        index = torch.searchsorted(cdf, u, right=True)
        return min(int(index.item()), weights.numel() - 1)
