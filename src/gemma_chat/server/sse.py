"""Server-sent events as OpenAI streams them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from gemma_chat.domain.errors import GemmaChatError
from gemma_chat.domain.models import StreamChunk
from gemma_chat.server.errors import public_error
from gemma_chat.server.protocol import StreamErrorBody, StreamErrorEvent

if TYPE_CHECKING:
    from gemma_chat.server.dependencies import Admission

__all__ = ["DONE", "Primed", "error_event", "event", "primed"]

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


async def primed(chunks: AsyncIterator[StreamChunk], admission: Admission) -> Any:
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


class Primed:
    """The first chunk again, then the rest; closing it closes the stream behind it."""

    def __init__(self, first: StreamChunk | None, rest: AsyncIterator[StreamChunk]) -> None:
        self._first = first
        self._rest = rest

    def __aiter__(self) -> Primed:
        return self

    async def __anext__(self) -> StreamChunk:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return await anext(self._rest)

    async def aclose(self) -> None:
        await self._rest.aclose()  # type: ignore[attr-defined]
