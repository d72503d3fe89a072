"""A model's answer to a conversation: from the response cache, or from the model within the
guard (time limit, failures counted); streamed or whole."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing

from gemma_chat.application.inference.guards import Guard
from gemma_chat.application.inference.response_cache import ResponseCache
from gemma_chat.domain.errors import InferenceError
from gemma_chat.domain.interfaces import LLMProtocol
from gemma_chat.domain.models import (
    ChatMessage,
    Completion,
    FinishReason,
    GenerationConfig,
    StreamChunk,
    TokenLogprob,
    TokenUsage,
)

__all__ = ["Answers", "Record"]

# Called with the completion and whether it came from the cache, before the last chunk is yielded.
Record = Callable[[Completion, bool], Awaitable[None]]


class Answers:
    def __init__(self, cache: ResponseCache, guard: Guard) -> None:
        self._cache = cache
        self._guard = guard

    async def answer(
        self, llm: LLMProtocol, messages: list[ChatMessage], config: GenerationConfig
    ) -> tuple[Completion, bool]:
        """The answer to ``messages``, and whether it came from the cache."""
        key = self._cache.key_for(llm.model_name, messages, config)
        completion = self._cache.get(key)
        if completion is not None:
            return completion, True
        completion = await self._guard.call(llm.generate(messages, config))
        self._cache.put(key, completion)
        return completion, False

    async def stream(
        self,
        llm: LLMProtocol,
        messages: list[ChatMessage],
        config: GenerationConfig,
        record: Record,
    ) -> AsyncGenerator[StreamChunk, None]:
        """``answer`` as chunks; ``record`` runs just before the last chunk is yielded (not for a
        cancelled generation, nor for a consumer that stops early)."""
        key = self._cache.key_for(llm.model_name, messages, config)
        hit = self._cache.get(key)
        if hit is not None:
            await record(hit, True)
            if hit.text:
                yield StreamChunk(hit.text, logprobs=hit.logprobs)
            final_logprobs = () if hit.text else hit.logprobs
            yield StreamChunk(
                "", hit.finish_reason, hit.token_usage, hit.tool_calls, final_logprobs
            )
            return
        parts: list[str] = []
        logprobs: list[TokenLogprob] = []
        async with aclosing(self._guard.stream(llm.stream(messages, config))) as chunks:
            async for chunk in chunks:
                parts.append(chunk.text)
                logprobs += chunk.logprobs
                if chunk.finish_reason is not None:
                    completion = Completion(
                        "".join(parts),
                        chunk.finish_reason,
                        chunk.token_usage or TokenUsage(),
                        chunk.tool_calls,
                        tuple(logprobs),
                    )
                    if completion.finish_reason is not FinishReason.CANCELLED:
                        self._cache.put(key, completion)
                        await record(completion, False)
                    yield chunk
                    return
                yield chunk
        raise InferenceError("The model's stream ended without a final chunk.")
