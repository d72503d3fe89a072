"""The port every language model backend implements."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol, runtime_checkable

from gemma_chat.domain.models import ChatMessage, Completion, GenerationConfig, StreamChunk

__all__ = ["HealthCheckProtocol", "LLMProtocol", "RawCompletionProtocol"]


@runtime_checkable
class LLMProtocol(Protocol):
    """A chat model that can be loaded, asked and streamed from.

    ``generate`` and ``stream`` take the whole conversation as role/content dicts (system prompt
    first) and must not block the event loop.
    """

    @property
    def model_name(self) -> str: ...

    @property
    def is_loaded(self) -> bool: ...

    async def load(self) -> None: ...

    async def unload(self) -> None: ...

    async def generate(
        self, messages: Sequence[ChatMessage], config: GenerationConfig
    ) -> Completion: ...

    def stream(
        self, messages: Sequence[ChatMessage], config: GenerationConfig
    ) -> AsyncIterator[StreamChunk]: ...

    def count_tokens(self, text: str) -> int: ...

    def get_model_info(self) -> dict[str, Any]: ...


@runtime_checkable
class RawCompletionProtocol(Protocol):
    """An LLM that can also continue a raw prompt, without a chat format."""

    async def complete(self, prompt: str, config: GenerationConfig) -> Completion: ...

    def stream_completion(
        self, prompt: str, config: GenerationConfig
    ) -> AsyncIterator[StreamChunk]: ...


@runtime_checkable
class HealthCheckProtocol(Protocol):
    """An LLM behind a connection or another process (a remote server, vLLM's engine) that can
    tell whether it still serves: ``check_health`` raises a ``GemmaChatError`` when it does not.
    """

    async def check_health(self) -> None: ...
