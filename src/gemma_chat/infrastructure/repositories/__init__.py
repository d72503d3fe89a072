"""Adapters of the ``SessionRepository`` port."""

from gemma_chat.infrastructure.repositories.in_memory import InMemorySessionRepository

__all__ = ["InMemorySessionRepository"]
