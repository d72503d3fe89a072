"""Sessions kept in this process's memory (the library's default store).

``get`` hands out the stored object itself, so requests of one process share a session's
state; a different copy (read at another version) is saved only if nothing was saved since it
was read, as in SQLite.
"""

from __future__ import annotations

from gemma_chat.domain.errors import SessionConflictError, SessionNotFoundError
from gemma_chat.domain.models import ChatSession

__all__ = ["InMemorySessionRepository"]


class InMemorySessionRepository:
    def __init__(self) -> None:
        self._sessions: dict[str, ChatSession] = {}

    async def add(self, session: ChatSession) -> None:
        self._store(session, adding=True)

    async def get(self, session_id: str) -> ChatSession:
        try:
            return self._sessions[session_id]
        except KeyError:
            raise SessionNotFoundError(session_id) from None

    async def list(self) -> list[ChatSession]:
        return sorted(self._sessions.values(), key=lambda s: s.created_at)

    async def save(self, session: ChatSession) -> None:
        self._store(session, adding=False)

    def _store(self, session: ChatSession, *, adding: bool) -> None:
        stored = self._sessions.get(session.id)
        stored_version = 0 if stored is None else stored.version
        if session.version and not (adding and stored is None):
            # A copy read from a store is saved only over the state it was read at.
            if stored is None:
                raise SessionNotFoundError(session.id)  # deleted since it was read
            if stored_version != session.version:
                raise SessionConflictError(
                    session.id, version=session.version, stored_version=stored_version
                )
        session.version = stored_version + 1
        self._sessions[session.id] = session

    async def delete(self, session_id: str) -> None:
        if self._sessions.pop(session_id, None) is None:
            raise SessionNotFoundError(session_id)

    async def contains(self, session_id: str) -> bool:
        return session_id in self._sessions
