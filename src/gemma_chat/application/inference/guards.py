"""Model calls within the request's time limit, their failures counted and mapped onto
gemma-chat's errors (for adapters outside ``BaseLLM`` that did not map their own)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable

from gemma_chat.application.inference.statistics import ServiceStatistics
from gemma_chat.domain.errors import (
    GemmaChatError,
    GenerationTimeoutError,
    InferenceError,
    ValidationError,
)
from gemma_chat.domain.models import Completion, StreamChunk
from gemma_chat.shared.config import LimitsSettings

__all__ = ["Guard"]


class Guard:
    def __init__(self, stats: ServiceStatistics, limits: LimitsSettings) -> None:
        self._stats = stats
        self._limits = limits

    async def call(self, call: Awaitable[Completion]) -> Completion:
        """``call``'s completion within the time limit; a failure is counted, then raised."""
        try:
            return await self._in_time(call)
        except asyncio.CancelledError:
            self._stats.record_cancelled()
            raise
        except GemmaChatError as exc:
            self._stats.record_error(client_error=isinstance(exc, ValidationError))
            raise
        except Exception as exc:  # an adapter outside BaseLLM that did not map its error
            self._stats.record_error()
            raise InferenceError(f"The model failed: {type(exc).__name__}: {exc}") from exc

    async def stream(self, chunks: AsyncIterator[StreamChunk]) -> AsyncGenerator[StreamChunk, None]:
        """A model's stream within the time limit, its failures counted and mapped; closing this
        closes the model's stream at once, which stops its generation."""
        finished = False
        try:
            async for chunk in self._timed(chunks):
                finished = chunk.finish_reason is not None
                yield chunk
        except (asyncio.CancelledError, GeneratorExit):
            if not finished:  # closed after its last chunk is a normal end, not a cancellation
                self._stats.record_cancelled()
            raise
        except GemmaChatError as exc:
            self._stats.record_error(client_error=isinstance(exc, ValidationError))
            raise
        except Exception as exc:
            self._stats.record_error()
            raise InferenceError(f"The model failed while streaming: {exc}") from exc
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    def _timeout_error(self) -> GenerationTimeoutError:
        limit = self._limits.request_timeout_seconds
        return GenerationTimeoutError(
            f"The answer took longer than {limit:g} s (GEMMA_LIMITS__REQUEST_TIMEOUT_SECONDS) "
            "and was stopped; ask for fewer tokens or raise the limit."
        )

    async def _in_time(self, call: Awaitable[Completion]) -> Completion:
        try:
            return await asyncio.wait_for(call, self._limits.request_timeout_seconds)
        except TimeoutError:
            raise self._timeout_error() from None

    async def _timed(self, chunks: AsyncIterator[StreamChunk]) -> AsyncIterator[StreamChunk]:
        """``chunks`` until the request's time limit; then the stream stops with an error."""
        # One deadline on the loop's clock, armed around each wait: asyncio.timeout_at adds no
        # task and no extra pass of the loop per chunk, as wait_for did.
        deadline = asyncio.get_running_loop().time() + self._limits.request_timeout_seconds
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise self._timeout_error() from None
            yield chunk
