"""``create_app``: assembles the FastAPI application (error handlers, middleware, lifespan and
one router per API); its lifespan starts and stops one InferenceService.

The model loads in the background, so the server answers at once: ``/health`` says 503 while
loading, and so do the API routes, with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from gemma_chat import __version__
from gemma_chat.application.inference import InferenceService
from gemma_chat.bootstrap import build_service
from gemma_chat.server.dependencies import ServerState
from gemma_chat.server.errors import install_error_handlers
from gemma_chat.server.metrics import install_metrics
from gemma_chat.server.middleware import BodySizeLimit
from gemma_chat.server.routers import docs, health, openai, responses, sessions, web
from gemma_chat.shared.config import Settings, default_server_storage_url, get_settings

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


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

    # /docs is routers/docs.py's (Swagger UI's files served here, not from a CDN); no /redoc.
    app = FastAPI(
        title="gemma-chat",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
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

    for api in (health, openai, responses, sessions, docs, web):
        api.attach_router(app)
    return app


def _log_load_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("The model failed to load: %s", task.exception())
