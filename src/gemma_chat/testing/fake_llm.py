"""``FakeLLM``: scripted answers through the real ``BaseLLM`` machinery."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from gemma_chat.domain.models import (
    ChatMessage,
    Completion,
    FinishReason,
    GenerationConfig,
    StreamChunk,
    TokenUsage,
)
from gemma_chat.infrastructure.llm.adapters.base import BaseLLM
from gemma_chat.shared.config import Settings, get_settings

__all__ = ["FakeLLM", "GenerationCall", "create_mock_llm"]


@dataclass(frozen=True, slots=True)
class GenerationCall:
    prompt: str
    kwargs: dict[str, Any]


class FakeLLM(BaseLLM):
    """Answers with ``responses`` in turn (cycling), word by word when streamed.

    State to assert on: ``calls``, ``load_count``, ``unload_count``, ``inference_count``.
    Failures to inject: ``fail_with`` (raised by the next generations) and ``fail_after_chunks``
    (raised mid-stream). ``delay`` sleeps before each chunk, to test slow models.
    """

    def __init__(
        self,
        responses: Iterable[str] = ("mock response",),
        *,
        model_name: str = "fake-llm",
        settings: Settings | None = None,
        context_length: int | None = None,
        delay: float = 0.0,
        footprint_mb: float = 0.0,
    ) -> None:
        settings = settings if settings is not None else get_settings()
        settings = settings.model_copy(
            update={"model": settings.model.model_copy(update={"name": model_name})}
        )
        super().__init__(settings)
        self.responses = list(responses) or [""]
        self._cycle = itertools.cycle(self.responses)
        self._context_length = context_length
        self.delay = delay
        self.footprint_mb = footprint_mb
        self.calls: list[GenerationCall] = []
        self.messages_seen: list[Sequence[ChatMessage]] = []
        self.load_count = 0
        self.unload_count = 0
        self.fail_with: BaseException | None = None
        self.fail_after_chunks: int | None = None
        self.streams_closed = 0

    @property
    def context_length(self) -> int | None:
        return self._context_length

    def _extra_model_info(self) -> dict[str, Any]:
        return {"memory_footprint_mb": self.footprint_mb}

    async def _load_model_implementation(self) -> None:
        self.load_count += 1

    async def _unload_model_implementation(self) -> None:
        self.unload_count += 1

    async def generate(self, messages: Sequence[ChatMessage], config: GenerationConfig) -> Any:
        self.messages_seen.append(list(messages))
        return await super().generate(messages, config)

    def stream(self, messages: Sequence[ChatMessage], config: GenerationConfig) -> Any:
        self.messages_seen.append(list(messages))
        return super().stream(messages, config)

    async def _generate_implementation(self, prompt: str, **kwargs: Any) -> str:
        self.calls.append(GenerationCall(prompt, kwargs))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_with is not None:
            raise self.fail_with
        text, cut = self._answer(kwargs)
        usage = TokenUsage(self.count_tokens(prompt), self.count_tokens(text))
        return Completion(text, FinishReason.LENGTH if cut else FinishReason.STOP, usage)

    async def _stream_implementation(self, prompt: str, **kwargs: Any) -> AsyncIterator[str]:
        self.calls.append(GenerationCall(prompt, kwargs))
        try:
            if self.fail_with is not None and self.fail_after_chunks is None:
                raise self.fail_with
            text, cut = self._answer(kwargs)
            words = text.split(" ")
            for index, word in enumerate(words):
                if self.fail_after_chunks is not None and index == self.fail_after_chunks:
                    raise self.fail_with or RuntimeError("injected mid-stream failure")
                if self.delay:
                    await asyncio.sleep(self.delay)
                yield word if index == 0 else " " + word
            if cut:
                yield StreamChunk("", FinishReason.LENGTH)
        finally:
            self.streams_closed += 1

    def _answer(self, kwargs: dict[str, Any]) -> tuple[str, bool]:
        """The next answer, cut to ``max_new_tokens`` words, and whether it was cut (its
        finish reason is then ``length``, as a model's that ran out of tokens)."""
        words = next(self._cycle).split(" ")
        limit = kwargs["max_new_tokens"]
        return " ".join(words[:limit]), len(words) > limit


def create_mock_llm(response: str = "mock response") -> FakeLLM:
    """A ``FakeLLM`` that always answers ``response``."""
    return FakeLLM([response])
