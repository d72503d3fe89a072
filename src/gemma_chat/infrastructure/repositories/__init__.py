"""Adapters of the ``SessionRepository`` port."""

from gemma_chat.infrastructure.repositories.factory import create_session_repository
from gemma_chat.infrastructure.repositories.in_memory import InMemorySessionRepository
from gemma_chat.infrastructure.repositories.sqlite import SQLiteSessionRepository

__all__ = ["InMemorySessionRepository", "SQLiteSessionRepository", "create_session_repository"]
