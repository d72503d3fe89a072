"""Log probabilities in OpenAI's shapes: a chat choice's ``logprobs.content`` and the legacy
``/v1/completions`` parallel lists."""

from __future__ import annotations

import math

from pydantic import BaseModel

from gemma_chat.domain.models import TokenLogprob

__all__ = ["ChoiceLogprobs", "CompletionLogprobs", "LogprobEntry", "TopLogprob"]

# What OpenAI sends for a token of no probability (JSON has no -Infinity).
_NO_PROBABILITY = -9999.0


def _finite(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else _NO_PROBABILITY


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None

    @classmethod
    def of(cls, token: str, logprob: float) -> TopLogprob:
        return cls(token=token, logprob=_finite(logprob), bytes=list(token.encode()))


class LogprobEntry(TopLogprob):
    """One generated token: its text, natural-log probability, UTF-8 bytes, alternatives."""

    top_logprobs: list[TopLogprob]

    @classmethod
    def entry(cls, logprob: TokenLogprob) -> LogprobEntry:
        return cls(
            token=logprob.token,
            logprob=_finite(logprob.logprob),
            bytes=list(logprob.token.encode()),
            top_logprobs=[TopLogprob.of(token, value) for token, value in logprob.top],
        )


class ChoiceLogprobs(BaseModel):
    """A chat choice's (or chunk choice's) ``logprobs``."""

    content: list[LogprobEntry] | None
    refusal: None = None

    @classmethod
    def of(cls, logprobs: tuple[TokenLogprob, ...]) -> ChoiceLogprobs:
        return cls(content=[LogprobEntry.entry(e) for e in logprobs])


class CompletionLogprobs(BaseModel):
    """The legacy ``/v1/completions`` shape: parallel lists; ``text_offset`` counts characters
    from the start of the generated text."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]

    @classmethod
    def of(cls, logprobs: tuple[TokenLogprob, ...], offset: int = 0) -> CompletionLogprobs:
        offsets: list[int] = []
        for entry in logprobs:
            offsets.append(offset)
            offset += len(entry.token)
        return cls(
            tokens=[e.token for e in logprobs],
            token_logprobs=[_finite(e.logprob) for e in logprobs],
            top_logprobs=[{token: _finite(v) for token, v in e.top} for e in logprobs],
            text_offset=offsets,
        )
