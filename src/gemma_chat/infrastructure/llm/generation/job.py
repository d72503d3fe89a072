"""One generation request as the generators see it: tokens in, text deltas out.

The text side (detokenizing, stop sequences, the chat format's leading space, end-of-turn
tokens, cancellation) is the same whichever generator produces the tokens, so it lives here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from gemma_chat.domain.errors import InferenceError
from gemma_chat.domain.models import FinishReason, StreamChunk, TokenUsage
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
    cancel: threading.Event = field(default_factory=threading.Event)
    generated: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None

    def __post_init__(self) -> None:
        self._detokenizer = IncrementalDetokenizer(self.decode)
        self._stops = StopSequenceFilter(self.stop)
        self._leading = self.strip_leading_space

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def accept(self, token: int) -> bool:
        """Take the next token; False once the job is finished (the generator drops it)."""
        if self.done:
            return False
        if token in self.end_ids:
            self.finish(FinishReason.STOP)
            return False
        if self.constraint is not None and not self.constraint.accept(token):
            raise InferenceError(f"The answer's grammar refused token {token}.")
        self.generated.append(token)
        self._push(self._detokenizer.push(token))
        if self._stops.stopped or (self.constraint is not None and self.constraint.is_terminated):
            self.finish(FinishReason.STOP)
        elif self.cancel.is_set():
            self.finish(FinishReason.CANCELLED)
        elif len(self.generated) >= self.max_new_tokens:
            self.finish(FinishReason.LENGTH)
        return not self.done

    def finish(self, reason: FinishReason) -> None:
        """End the job: release held-back text and send the final chunk with the usage."""
        if self.done:
            return
        self.finish_reason = reason
        tail = ""
        if not self._stops.stopped:
            tail = self._stops.push(self._lstrip(self._detokenizer.flush())) + self._stops.flush()
        usage = TokenUsage(len(self.prompt_ids), len(self.generated))
        self.emit(StreamChunk(tail, reason, usage))

    def fail(self, error: BaseException) -> None:
        if not self.done:
            self.finish_reason = FinishReason.CANCELLED
            self.emit(error)

    def _push(self, delta: str) -> None:
        released = self._stops.push(self._lstrip(delta))
        if released:
            self.emit(StreamChunk(released))

    def _lstrip(self, delta: str) -> str:
        # Whitespace before the answer's first character belongs to the format ("Assistant: x").
        if self._leading:
            delta = delta.lstrip()
            self._leading = not delta
        return delta
