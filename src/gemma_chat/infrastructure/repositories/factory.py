"""Which session store a URL names: ``memory://`` or ``sqlite:///path/to/sessions.db``."""

from __future__ import annotations

from pathlib import Path

from gemma_chat.domain.errors import ConfigurationError
from gemma_chat.domain.interfaces import SessionRepository
from gemma_chat.infrastructure.repositories.in_memory import InMemorySessionRepository
from gemma_chat.infrastructure.repositories.sqlite import SQLiteSessionRepository

__all__ = ["create_session_repository"]


def create_session_repository(url: str | None) -> SessionRepository:
    if url is None or url == "memory://":
        return InMemorySessionRepository()
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://")
        if not path:
            raise ConfigurationError("GEMMA_STORAGE__URL=sqlite:// needs a file path.")
        return SQLiteSessionRepository(Path(path).expanduser())
    raise ConfigurationError(
        f"GEMMA_STORAGE__URL={url!r}: use memory:// or sqlite:///path/to/sessions.db."
    )
