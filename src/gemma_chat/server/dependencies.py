"""What the routes depend on, all read from ``request.app.state``: the service (503 while the
model loads), the API key, a place among the requests in flight, the time-to-first-token timer."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gemma_chat.application.inference import InferenceService
from gemma_chat.server.errors import APIError, ClientDisconnected
from gemma_chat.server.metrics import ServerMetrics
from gemma_chat.shared.config import Settings

T = TypeVar("T")

__all__ = [
    "Admission",
    "ServerState",
    "Service",
    "first_token_timer",
    "require_api_key",
    "require_service",
    "serve_model",
    "state_of",
]


class ServerState:
    """The app's one service and what the server keeps beside it (``app.state.gemma``)."""

    def __init__(self, settings: Settings, service: InferenceService) -> None:
        self.settings = settings
        self.service = service
        self.metrics = ServerMetrics(service)
        self.loading: asyncio.Task[None] | None = None
        self.pending = 0  # generation requests in flight

    @property
    def ready(self) -> bool:
        task = self.loading
        return (
            task is not None and task.done() and not task.cancelled() and task.exception() is None
        )


def state_of(request: Request) -> ServerState:
    state: ServerState = request.app.state.gemma
    return state


# Declares the bearer scheme in /openapi.json, so /docs's "Authorize" sends the key; the check
# itself is require_api_key's (a missing or non-bearer header is None here, not FastAPI's 403).
_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="APIKey",
    description="GEMMA_SERVER__API_KEY, when the server sets one.",
)


async def require_api_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Every /v1 route: ``Authorization: Bearer <GEMMA_SERVER__API_KEY>`` when a key is set."""
    expected = state_of(request).settings.server.api_key
    if expected is None:
        return
    given = credentials.credentials if credentials is not None else ""
    # compare_digest: the time taken does not reveal how much of the key was right.
    if not hmac.compare_digest(given.strip().encode(), expected.get_secret_value().encode()):
        raise APIError(
            401,
            "Missing or wrong API key: send `Authorization: Bearer <key>`.",
            kind="authentication_error",
            code="invalid_api_key",
        )


async def require_service(request: Request) -> InferenceService:
    state = state_of(request)
    if not state.ready:
        raise APIError(
            503,
            "The model is still loading; retry in a few seconds.",
            kind="service_unavailable",
            code="model_loading",
            headers={"Retry-After": "5"},
        )
    return state.service


Service = Annotated[InferenceService, Depends(require_service)]


def serve_model(service: InferenceService, requested: str | None) -> str | None:
    """The model a request may use besides the service's own (None: the service's own).

    Only what the settings name: GEMMA_SERVER__MODELS, or a model directly inside
    GEMMA_SERVER__MODEL_DIRECTORY named by its folder or file name. Any other name is a 404
    before anything looks at the filesystem or a hub cache: a client cannot make the server
    read arbitrary paths.
    """
    if requested is None or requested == service.llm.model_name:
        return None
    server = service.settings.server
    if requested in server.models:
        return requested
    directory = server.model_directory
    if directory is not None and _plain_name(requested):
        candidate = directory / requested
        if candidate.exists():
            return str(candidate)
    served = ", ".join(repr(name) for name in [service.llm.model_name, *server.models])
    raise APIError(
        404,
        f"The model {requested!r} is not served here; this server serves {served} "
        "(GEMMA_SERVER__MODELS, GEMMA_SERVER__MODEL_DIRECTORY).",
        kind="not_found_error",
        code="model_not_found",
        param="model",
    )


def _plain_name(name: str) -> bool:
    """A file or folder name, not a path: nothing outside the model directory."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name


def first_token_timer(request: Request) -> Callable[[], None]:
    """Call it when a stream yields its first text: observes the time to first token once."""
    histogram = state_of(request).metrics.time_to_first_token
    started = time.perf_counter()
    done = False

    def observe() -> None:
        nonlocal done
        if not done:
            done = True
            histogram.observe(time.perf_counter() - started)

    return observe


async def _disconnected(request: Request) -> None:
    """Return when the client disconnects (the body is read: the next message says so)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class Admission:
    """A place among the generation requests in flight, or a 429 when there is none.

    Released when the response is done: for a stream, when its last event is sent.
    """

    def __init__(self, request: Request) -> None:
        state = state_of(request)
        limit = state.settings.server.max_pending_requests
        if state.pending >= limit:
            raise APIError(
                429,
                f"Too many requests in flight ({limit}); retry shortly.",
                kind="rate_limit_error",
                code="overloaded",
                headers={"Retry-After": "1"},
            )
        state.pending += 1
        self._state: ServerState | None = state
        self._request = request

    async def answer(self, call: Awaitable[T]) -> T:
        """``call``'s result (``until_disconnected``), the place released after it."""
        try:
            return await self.until_disconnected(call)
        finally:
            self.release()

    async def until_disconnected(self, call: Awaitable[T]) -> T:
        """``call``'s result; a client that disconnects first cancels it, as a stream's does
        once it runs (the generation stops at its next decode step, and the service counts it
        as cancelled), and ``ClientDisconnected`` is raised."""
        work = asyncio.ensure_future(call)
        gone = asyncio.ensure_future(_disconnected(self._request))
        try:
            await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
                raise ClientDisconnected
            return work.result()
        finally:
            gone.cancel()
            work.cancel()  # this request itself cancelled (server shutdown): the work too

    def release(self) -> None:
        """Idempotent: a stream releases when it ends, or when it is dropped unstarted."""
        if self._state is not None:
            self._state.pending -= 1
            self._state = None

    def stream(self, events: AsyncIterator[str]) -> AsyncIterator[str]:
        """``events``, releasing the place when they end (or are never consumed)."""

        async def released() -> AsyncIterator[str]:
            try:
                async for event in events:
                    yield event
            finally:
                self.release()

        wrapped = released()
        weakref.finalize(wrapped, self.release)
        return wrapped
