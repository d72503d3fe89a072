"""Ports: what the application needs from the outside world."""

from gemma_chat.domain.interfaces.llm import (
    HealthCheckProtocol,
    LLMProtocol,
    RawCompletionProtocol,
)
from gemma_chat.domain.interfaces.session_repository import SessionRepository

__all__ = ["HealthCheckProtocol", "LLMProtocol", "RawCompletionProtocol", "SessionRepository"]
