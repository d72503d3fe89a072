"""gemma-chat: an async framework for chatbots on local LLMs.

>>> from gemma_chat import InferenceService, ChatSession

Importing this package loads no model and does not import torch; ``GemmaLLM`` is imported on
first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gemma_chat.application.inference import InferenceService, ServiceState
from gemma_chat.domain.interfaces import LLMProtocol, RawCompletionProtocol, SessionRepository
from gemma_chat.domain.models import (
    ChatMessage,
    ChatSession,
    Completion,
    FinishReason,
    GenerationConfig,
    InferenceResponse,
    Message,
    Role,
    StreamChunk,
    TokenUsage,
)
from gemma_chat.infrastructure.llm.base import BaseLLM, LLMState
from gemma_chat.infrastructure.llm.registry import LLMRegistry, default_registry, register_llm
from gemma_chat.infrastructure.repositories import InMemorySessionRepository
from gemma_chat.shared.config import EMBEDDED_MODEL_NAME, LogLevel, Settings, get_settings
from gemma_chat.shared.exceptions import (
    ConfigurationError,
    ContextLengthExceededError,
    GemmaChatError,
    GenerationCancelledError,
    GenerationTimeoutError,
    InferenceError,
    InvalidGenerationConfigError,
    InvalidMessageError,
    ModelLoadError,
    ModelNotFoundError,
    ModelNotLoadedError,
    OutOfMemoryError,
    ServiceStateError,
    SessionNotFoundError,
    ValidationError,
)

if TYPE_CHECKING:
    from gemma_chat.infrastructure.llm.gemma import GemmaLLM

__version__ = "0.1.0"

__all__ = [
    "EMBEDDED_MODEL_NAME",
    "BaseLLM",
    "ChatMessage",
    "ChatSession",
    "Completion",
    "ConfigurationError",
    "ContextLengthExceededError",
    "FinishReason",
    "GemmaChatError",
    "GemmaLLM",
    "GenerationCancelledError",
    "GenerationConfig",
    "GenerationTimeoutError",
    "InMemorySessionRepository",
    "InferenceError",
    "InferenceResponse",
    "InferenceService",
    "InvalidGenerationConfigError",
    "InvalidMessageError",
    "LLMProtocol",
    "LLMRegistry",
    "LLMState",
    "LogLevel",
    "Message",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelNotLoadedError",
    "OutOfMemoryError",
    "RawCompletionProtocol",
    "Role",
    "ServiceState",
    "ServiceStateError",
    "SessionNotFoundError",
    "SessionRepository",
    "Settings",
    "StreamChunk",
    "TokenUsage",
    "ValidationError",
    "__version__",
    "default_registry",
    "get_settings",
    "register_llm",
]


def __getattr__(name: str) -> Any:
    if name == "GemmaLLM":  # imports torch and transformers: only when asked for
        from gemma_chat.infrastructure.llm.gemma import GemmaLLM

        return GemmaLLM
    raise AttributeError(f"module 'gemma_chat' has no attribute {name!r}")
