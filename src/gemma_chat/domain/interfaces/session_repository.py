"""The port that stores chat sessions."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from gemma_chat.domain.models import ChatSession

__all__ = ["SessionRepository"]


@runtime_checkable
class SessionRepository(Protocol):
    """Keeps sessions by id; ``get`` and ``delete`` raise ``SessionNotFoundError`` if unknown."""

    async def add(self, session: ChatSession) -> None: ...

    async def get(self, session_id: str) -> ChatSession: ...

    async def list(self) -> list[ChatSession]: ...

    async def save(self, session: ChatSession) -> None: ...

    async def delete(self, session_id: str) -> None: ...

    async def contains(self, session_id: str) -> bool: ...
