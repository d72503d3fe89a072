"""Server-sent events as OpenAI streams them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from typing import TYPE_CHECKING, Generic, TypeVar

from pydantic import BaseModel

from gemma_chat.domain.errors import GemmaChatError
from gemma_chat.domain.models import StreamChunk
from gemma_chat.server.errors import public_error
from gemma_chat.server.protocol import StreamErrorBody, StreamErrorEvent

if TYPE_CHECKING:
    from gemma_chat.server.dependencies import Admission

__all__ = ["DONE", "Primed", "error_event", "event", "primed", "side_by_side"]

T = TypeVar("T")

DONE = "data: [DONE]\n\n"


def event(payload: BaseModel) -> str:
    # json.dumps, not model_dump_json: the same bytes as the stream has always had (", " and
    # ": " separators, non-ASCII escaped).
    return f"data: {json.dumps(payload.model_dump(mode='json'))}\n\n"


def error_event(exc: GemmaChatError) -> str:
    """An error after the stream started: the status line is sent already."""
    public = public_error(exc)
    body = StreamErrorBody(message=public.message, type=public.kind, code=public.code)
    return event(StreamErrorEvent(error=body))


async def primed(chunks: AsyncIterator[T], admission: Admission) -> Primed[T]:
    """Wait for the first chunk before answering: a request the model refuses (too long for
    its context, say) is then an HTTP error, not an error event in a started stream."""
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        first = None
    except BaseException:
        admission.release()
        await chunks.aclose()  # type: ignore[attr-defined]
        raise
    return Primed(first, chunks)


class Primed(Generic[T]):
    """The first chunk again, then the rest; closing it closes the stream behind it."""

    def __init__(self, first: T | None, rest: AsyncIterator[T]) -> None:
        self._first = first
        self._rest = rest

    def __aiter__(self) -> Primed[T]:
        return self

    async def __anext__(self) -> T:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return await anext(self._rest)

    async def aclose(self) -> None:
        await self._rest.aclose()  # type: ignore[attr-defined]


async def side_by_side(
    streams: Sequence[AsyncIterator[StreamChunk]],
) -> AsyncIterator[tuple[int, StreamChunk]]:
    """Each stream's chunks as they come, tagged with the stream's index (OpenAI's ``n``
    choices, generated side by side in the engine's batch). Closing it closes every stream; the
    first error of any stream is raised."""
    if len(streams) == 1:
        async with aclosing(streams[0]) as only:  # type: ignore[type-var]
            async for chunk in only:
                yield 0, chunk
        return
    queue: asyncio.Queue[tuple[int, StreamChunk | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[StreamChunk]) -> None:
        try:
            async with aclosing(stream) as chunks:  # type: ignore[type-var]
                async for chunk in chunks:
                    await queue.put((index, chunk))
        except Exception as exc:
            await queue.put((index, exc))
        finally:
            queue.put_nowait((index, None))

    tasks = [asyncio.create_task(pump(i, stream)) for i, stream in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            index, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
