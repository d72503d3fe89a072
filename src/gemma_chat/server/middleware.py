"""ASGI middleware of the server's own (the request metrics are in ``metrics.py``)."""

from __future__ import annotations

from typing import Any

from gemma_chat.server.errors import error_response

__all__ = ["BodySizeLimit"]


class BodySizeLimit:
    """413 for a body over GEMMA_LIMITS__MAX_BODY_BYTES, declared or streamed (pure ASGI)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._too_large(scope, receive, send)
            return
        seen = 0

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _BodyTooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _BodyTooLarge:
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Any, receive: Any, send: Any) -> None:
        response = error_response(
            413,
            f"The request body is over {self.limit} bytes (GEMMA_LIMITS__MAX_BODY_BYTES).",
            "invalid_request_error",
            code="body_too_large",
        )
        await response(scope, receive, send)


class _BodyTooLarge(Exception):
    pass
