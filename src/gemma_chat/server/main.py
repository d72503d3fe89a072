"""``python -m gemma_chat.server.main``: serve the API with uvicorn on GEMMA_SERVER__HOST:PORT."""

from __future__ import annotations

import logging

__all__ = ["main"]


def main() -> None:
    import uvicorn

    from gemma_chat.server.app import create_app
    from gemma_chat.shared.config import get_settings

    settings = get_settings()
    logging.basicConfig(level=settings.log_level.value)
    uvicorn.run(
        create_app(settings),
        host=settings.server.host,
        port=settings.server.port,
        log_level=settings.log_level.value.lower(),
    )


if __name__ == "__main__":
    main()
