"""Sessions kept in this process's memory (the library's default store)."""

from __future__ import annotations

from gemma_chat.domain.errors import SessionNotFoundError
from gemma_chat.domain.models import ChatSession

__all__ = ["InMemorySessionRepository"]


class InMemorySessionRepository:
    def __init__(self) -> None:
        self._sessions: dict[str, ChatSession] = {}

    async def add(self, session: ChatSession) -> None:
        self._sessions[session.id] = session

    async def get(self, session_id: str) -> ChatSession:
        try:
            return self._sessions[session_id]
        except KeyError:
            raise SessionNotFoundError(session_id) from None

    async def list(self) -> list[ChatSession]:
        return sorted(self._sessions.values(), key=lambda s: s.created_at)

    async def save(self, session: ChatSession) -> None:
        self._sessions[session.id] = session

    async def delete(self, session_id: str) -> None:
        if self._sessions.pop(session_id, None) is None:
            raise SessionNotFoundError(session_id)

    async def contains(self, session_id: str) -> bool:
        return session_id in self._sessions
