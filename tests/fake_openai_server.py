"""A scripted OpenAI-compatible server for the remote adapter's failure paths.

Each request to ``/v1/chat/completions`` or ``/v1/completions`` takes the next ``Reply`` of
``script()``, each one to ``/v1/models`` the next of ``script_models()``; with none left they
answer normally. What clients sent is kept in ``requests`` (generation bodies) and ``headers``
(of every request), for tests to assert on.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

__all__ = [
    "ANSWER",
    "CONTEXT_TOO_LONG",
    "FakeOpenAIServer",
    "Reply",
    "error_reply",
]

ANSWER = "Hello from the fake server"
# vLLM's wording (OpenAI's starts the same way), with its code.
CONTEXT_TOO_LONG = (
    "This model's maximum context length is 2048 tokens. However, you requested 2100 tokens "
    "(2000 in the messages, 100 in the completion). Please reduce the length of the messages "
    "or completion."
)


@dataclass
class Reply:
    status: int = 200
    text: str = ANSWER
    error: dict[str, Any] | None = None  # OpenAI's error object, for a status >= 400
    headers: dict[str, str] = field(default_factory=dict)
    break_after: int | None = None  # a stream drops the connection after this many chunks
    usage: bool = True  # and a stream sends it when asked for it
    finish_reason: str | None = "stop"  # None: a stream ends without saying why
    choices: bool = True  # False: an answer without any choice
    delay: float = 0.0  # seconds before answering
    pause: float = 0.0  # seconds between streamed pieces


def error_reply(
    status: int, message: str, *, kind: str = "invalid_request_error", code: str | None = None
) -> Reply:
    return Reply(status, error={"message": message, "type": kind, "param": None, "code": code})


class _Disconnect(Exception):
    """Raised inside a streaming body: uvicorn then drops the connection mid-response."""


class FakeOpenAIServer:
    def __init__(self, model: str = "fake-remote") -> None:
        self.model = model
        self.replies: deque[Reply] = deque()
        self.model_replies: deque[Reply] = deque()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.app = self._build()

    def script(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def script_models(self, *replies: Reply) -> None:
        self.model_replies.extend(replies)

    def _next(self, request: Request, body: dict[str, Any] | None) -> Reply:
        self.headers.append(dict(request.headers))
        if body is None:
            return self.model_replies.popleft() if self.model_replies else Reply()
        self.requests.append(body)
        return self.replies.popleft() if self.replies else Reply()

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.get("/health")
        async def health() -> dict[str, str]:
            return {"status": "ok"}

        @app.get("/v1/models", response_model=None)
        async def models(request: Request) -> Any:
            reply = self._next(request, None)
            if reply.status >= 400:
                return _error(reply)
            model = {"id": self.model, "object": "model", "created": 0, "owned_by": "fake"}
            return {"object": "list", "data": [model]}

        @app.post("/v1/chat/completions", response_model=None)
        async def chat(request: Request) -> Any:
            return await self._answer(request, chat=True)

        @app.post("/v1/completions", response_model=None)
        async def completions(request: Request) -> Any:
            return await self._answer(request, chat=False)

        return app

    async def _answer(self, request: Request, *, chat: bool) -> Any:
        body = await request.json()
        reply = self._next(request, body)
        await asyncio.sleep(reply.delay)
        if reply.status >= 400:
            return _error(reply)
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(
                _stream(reply, chat=chat, usage=include_usage and reply.usage),
                media_type="text/event-stream",
                headers=reply.headers,
            )
        words = reply.text.split(" ")
        choice: dict[str, Any] = {"index": 0, "finish_reason": reply.finish_reason or "stop"}
        if chat:
            choice["message"] = {"role": "assistant", "content": reply.text}
        else:
            choice["text"] = reply.text
        payload: dict[str, Any] = {
            "id": "cmpl-fake",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [choice] if reply.choices else [],
        }
        if reply.usage:
            payload["usage"] = _usage(len(words))
        return JSONResponse(payload, headers=reply.headers)


def _usage(completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": 11,
        "completion_tokens": completion_tokens,
        "total_tokens": 11 + completion_tokens,
    }


def _error(reply: Reply) -> JSONResponse:
    return JSONResponse({"error": reply.error}, status_code=reply.status, headers=reply.headers)


async def _stream(reply: Reply, *, chat: bool, usage: bool) -> AsyncIterator[str]:
    words = reply.text.split(" ")
    base = {"id": "cmpl-fake", "created": int(time.time()), "model": "fake"}
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(text: str | None, finish: str | None) -> str:
        piece: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if chat:
            piece["delta"] = {} if text is None else {"content": text}
        else:
            piece["text"] = text or ""
        return f"data: {json.dumps({**base, 'object': kind, 'choices': [piece]})}\n\n"

    for index, word in enumerate(words):
        if reply.break_after is not None and index == reply.break_after:
            raise _Disconnect("scripted disconnect")
        if index:
            await asyncio.sleep(reply.pause)
        yield chunk(word if index == 0 else " " + word, None)
    if reply.finish_reason is not None:
        yield chunk(None, reply.finish_reason)
    if usage:
        payload = {**base, "object": kind, "choices": [], "usage": _usage(len(words))}
        yield f"data: {json.dumps(payload)}\n\n"
    yield "data: [DONE]\n\n"
