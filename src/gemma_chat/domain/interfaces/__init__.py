"""Ports: what the application needs from the outside world."""

from gemma_chat.domain.interfaces.llm import LLMProtocol, RawCompletionProtocol
from gemma_chat.domain.interfaces.session_repository import SessionRepository

__all__ = ["LLMProtocol", "RawCompletionProtocol", "SessionRepository"]
