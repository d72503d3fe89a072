"""``python -m gemma_chat.server.main``: serve the API with uvicorn on GEMMA_SERVER__HOST:PORT.

On SIGTERM (or Ctrl-C) the server stops accepting, gives requests in flight
GEMMA_SERVER__SHUTDOWN_TIMEOUT_SECONDS, cancels the rest, closes the service and exits 0.
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any

import uvicorn

from gemma_chat.server.connections import bounded_http_protocol
from gemma_chat.shared.config import Settings

__all__ = ["main", "serve", "server_config"]


def server_config(
    settings: Settings, app: Any, *, host: str | None = None, port: int | None = None
) -> uvicorn.Config:
    """uvicorn's configuration for ``app`` from the settings, with the connection limits."""
    return uvicorn.Config(
        app,
        host=host or settings.server.host,
        port=port or settings.server.port,
        log_level=settings.log_level.value.lower(),
        timeout_graceful_shutdown=max(1, round(settings.server.shutdown_timeout_seconds)),
        http=bounded_http_protocol(
            max_connections=settings.server.max_connections,
            header_timeout=settings.server.header_timeout_seconds,
        ),
        timeout_keep_alive=settings.server.keep_alive_seconds,
    )


def serve(settings: Settings, *, host: str | None = None, port: int | None = None) -> None:
    from gemma_chat.server.app import create_app

    # uvicorn shuts down gracefully on SIGTERM and then raises the signal again; this handler
    # (restored by uvicorn before it does) turns that into a clean exit 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    config = server_config(settings, create_app(settings), host=host, port=port)
    if settings.server.web_ui:
        # uvicorn's own logger (set up by its Config), beside its "Uvicorn running on ...".
        logging.getLogger("uvicorn.error").info(
            "The chat page: http://%s:%d/ (the API's docs: /docs)", config.host, config.port
        )
    uvicorn.Server(config).run()


def _exit_cleanly(signum: int, frame: Any) -> None:
    sys.exit(0)


def main() -> None:
    from gemma_chat.shared.config import get_settings

    settings = get_settings()
    logging.basicConfig(level=settings.log_level.value)
    serve(settings)


if __name__ == "__main__":
    main()
