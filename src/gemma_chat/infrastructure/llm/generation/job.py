"""One generation request as the generators see it: tokens in, text deltas out.

The text side (detokenizing, stop sequences, the chat format's leading space, end-of-turn
tokens, cancellation) is the same whichever generator produces the tokens, so it lives here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from gemma_chat.domain.errors import InferenceError
from gemma_chat.domain.models import FinishReason, StreamChunk, TokenLogprob, TokenUsage
from gemma_chat.infrastructure.llm.generation.constraints import TokenConstraint
from gemma_chat.infrastructure.llm.generation.detokenizer import IncrementalDetokenizer
from gemma_chat.infrastructure.llm.generation.sampling import SamplingParams
from gemma_chat.infrastructure.llm.generation.stop_sequences import StopSequenceFilter

__all__ = ["Emit", "GenerationJob"]

Emit = Callable[[StreamChunk | BaseException], None]


@dataclass
class GenerationJob:
    prompt_ids: list[int]
    sampling: SamplingParams
    max_new_tokens: int
    stop: tuple[str, ...]
    end_ids: frozenset[int]
    decode: Callable[[list[int]], str]
    emit: Emit
    strip_leading_space: bool = False
    constraint: TokenConstraint | None = None  # the grammar the answer follows
    # None: no log probabilities; else each token's, with this many alternatives
    logprobs: int | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    generated: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None

    def __post_init__(self) -> None:
        self._detokenizer = IncrementalDetokenizer(self.decode)
        self._stops = StopSequenceFilter(self.stop)
        self._leading = self.strip_leading_space
        # Entries of tokens whose text no chunk has carried yet (held back by the stop filter).
        self._pending: list[TokenLogprob] = []

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def accept(self, token: int, logprob: TokenLogprob | None = None) -> bool:
        """Take the next token (and its log probability entry, when the job asks for them);
        False once the job is finished (the generator drops it)."""
        if self.done:
            return False
        if token in self.end_ids:
            self.finish(FinishReason.STOP)
            return False
        if self.constraint is not None and not self.constraint.accept(token):
            raise InferenceError(f"The answer's grammar refused token {token}.")
        self.generated.append(token)
        if logprob is not None:
            self._pending.append(logprob)
        self._push(self._detokenizer.push(token))
        if self._stops.stopped or (self.constraint is not None and self.constraint.is_terminated):
            self.finish(FinishReason.STOP)
        elif self.cancel.is_set():
            self.finish(FinishReason.CANCELLED)
        elif len(self.generated) >= self.max_new_tokens:
            self.finish(FinishReason.LENGTH)
        return not self.done

    def score(self, logits: torch.Tensor, token: int) -> TokenLogprob | None:
        """``token``'s log probability entry in ``logits`` [V], the row it was chosen from
        (None when the job asks for none)."""
        if self.logprobs is None:
            return None
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        top: tuple[tuple[str, float], ...] = ()
        if self.logprobs > 0:
            values, ids = torch.topk(logprobs, min(self.logprobs, logprobs.shape[-1]))
            top = tuple(
                (self.decode([i]), v)
                for v, i in zip(values.tolist(), ids.tolist(), strict=True)
                if v > float("-inf")  # tokens a grammar ruled out are no alternatives
            )
        return TokenLogprob(self.decode([token]), float(logprobs[token]), top)

    def finish(self, reason: FinishReason) -> None:
        """End the job: release held-back text and send the final chunk with the usage."""
        if self.done:
            return
        self.finish_reason = reason
        tail = ""
        if not self._stops.stopped:
            tail = self._stops.push(self._lstrip(self._detokenizer.flush())) + self._stops.flush()
        usage = TokenUsage(len(self.prompt_ids), len(self.generated))
        self.emit(StreamChunk(tail, reason, usage, logprobs=self._take_pending()))

    def fail(self, error: BaseException) -> None:
        if not self.done:
            self.finish_reason = FinishReason.CANCELLED
            self.emit(error)

    def _push(self, delta: str) -> None:
        released = self._stops.push(self._lstrip(delta))
        if released:
            self.emit(StreamChunk(released, logprobs=self._take_pending()))

    def _take_pending(self) -> tuple[TokenLogprob, ...]:
        taken = tuple(self._pending)
        self._pending.clear()
        return taken

    def _lstrip(self, delta: str) -> str:
        # Whitespace before the answer's first character belongs to the format ("Assistant: x").
        if self._leading:
            delta = delta.lstrip()
            self._leading = not delta
        return delta
