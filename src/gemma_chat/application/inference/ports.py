"""Ports the service needs besides the domain's (``LLMProtocol``, ``SessionRepository``)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from gemma_chat.domain.interfaces import LLMProtocol
from gemma_chat.shared.config import Settings

__all__ = ["LLMProvider"]


@runtime_checkable
class LLMProvider(Protocol):
    """Builds the model that settings name (not loaded): the service's own model, and the other
    models requests name. ``LLMRegistry`` is the adapter the composition root gives."""

    def create(self, settings: Settings) -> LLMProtocol: ...
