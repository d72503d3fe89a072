"""``create_app``: the FastAPI application; its lifespan starts and stops one InferenceService.

The model loads in the background, so the server answers at once: ``/health`` says 503 while
loading, and so do the API routes, with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from gemma_chat import __version__
from gemma_chat.application.inference import InferenceService
from gemma_chat.bootstrap import build_service
from gemma_chat.server.errors import APIError, error_response, install_error_handlers
from gemma_chat.server.metrics import ServerMetrics, install_metrics
from gemma_chat.shared.config import Settings, default_server_storage_url, get_settings

__all__ = [
    "Admission",
    "ServerState",
    "Service",
    "create_app",
    "require_api_key",
    "require_service",
]

logger = logging.getLogger(__name__)


class ServerState:
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


def state_of(request: Request) -> ServerState:
    state: ServerState = request.app.state.gemma
    return state


async def require_api_key(request: Request) -> None:
    """Every /v1 route: ``Authorization: Bearer <GEMMA_SERVER__API_KEY>`` when a key is set."""
    expected = state_of(request).settings.server.api_key
    if expected is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    # compare_digest: the time taken does not reveal how much of the key was right.
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), expected.get_secret_value().encode()
    ):
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


def create_app(
    settings: Settings | None = None, service: InferenceService | None = None
) -> FastAPI:
    settings = settings if settings is not None else get_settings()
    if service is None and settings.storage.url is None:
        # The server keeps sessions on disk by default: they survive restarts and crashes.
        storage = settings.storage.model_copy(update={"url": default_server_storage_url()})
        settings = settings.model_copy(update={"storage": storage})
    state = ServerState(settings, service or build_service(settings))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.loading = asyncio.create_task(state.service.start())
        state.loading.add_done_callback(_log_load_failure)
        try:
            yield
        finally:
            if not state.loading.done():
                state.loading.cancel()
            with contextlib.suppress(BaseException):
                await state.loading
            await state.service.close()

    app = FastAPI(title="gemma-chat", version=__version__, lifespan=lifespan)
    app.state.gemma = state
    install_error_handlers(app)
    install_metrics(app, state.metrics)
    app.add_middleware(BodySizeLimit, limit=settings.limits.max_body_bytes)
    if settings.server.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.server.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
        )

    @app.get("/health", response_model=None)
    async def health(request: Request) -> Any:
        current = state_of(request)
        if current.loading is None or not current.loading.done():
            return JSONResponse({"status": "loading"}, status_code=503)
        if not current.ready:
            return JSONResponse({"status": "unhealthy", "error": "the model failed to load"}, 503)
        report = await current.service.health_check()
        return JSONResponse(report, status_code=200 if report["status"] != "unhealthy" else 503)

    from gemma_chat.server import openai_routes, session_routes

    for routes in (openai_routes.router, session_routes.router):
        app.include_router(routes, dependencies=[Depends(require_api_key)])
    return app


def _log_load_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("The model failed to load: %s", task.exception())
