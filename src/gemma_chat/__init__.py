"""gemma-chat: an async framework for chatbots on local LLMs.

>>> from gemma_chat import InferenceService, ChatSession

Importing this package loads no model and imports neither torch nor openai; ``GemmaLLM``,
``OpenAICompatibleLLM`` and ``VLLMLLM`` are imported on first use.
"""

from __future__ import annotations

from importlib import metadata as _metadata
from typing import TYPE_CHECKING, Any

from gemma_chat.application.inference import ServiceState
from gemma_chat.bootstrap import InferenceService
from gemma_chat.domain.errors import (
    BackendOverloadedError,
    BackendUnavailableError,
    BrokenLogitsError,
    ConfigurationError,
    ContextLengthExceededError,
    CorruptEntryError,
    GemmaChatError,
    GenerationCancelledError,
    GenerationTimeoutError,
    InferenceError,
    InvalidGenerationConfigError,
    InvalidMessageError,
    InvalidSchemaError,
    ModelLoadError,
    ModelNotFoundError,
    ModelNotLoadedError,
    NothingToRegenerateError,
    OutOfMemoryError,
    ServiceStateError,
    SessionBusyError,
    SessionConflictError,
    SessionNotFoundError,
    StructuredOutputError,
    UnknownToolError,
    ValidationError,
)
from gemma_chat.domain.interfaces import (
    HealthCheckProtocol,
    LLMProtocol,
    RawCompletionProtocol,
    SessionRepository,
)
from gemma_chat.domain.models import (
    ChatMessage,
    ChatSession,
    Completion,
    FinishReason,
    GenerationConfig,
    InferenceResponse,
    Message,
    ResponseFormat,
    Role,
    StreamChunk,
    TokenUsage,
    ToolCall,
    ToolChoice,
    ToolDefinition,
)
from gemma_chat.infrastructure.llm.adapters.base import BaseLLM, LLMState
from gemma_chat.infrastructure.llm.registry import LLMRegistry, default_registry, register_llm
from gemma_chat.infrastructure.repositories import InMemorySessionRepository
from gemma_chat.shared.config import EMBEDDED_MODEL_NAME, LogLevel, Settings, get_settings

if TYPE_CHECKING:
    from gemma_chat.infrastructure.llm.adapters.local_model import GemmaLLM
    from gemma_chat.infrastructure.llm.adapters.openai_compatible import OpenAICompatibleLLM
    from gemma_chat.infrastructure.llm.adapters.vllm import VLLMLLM

__version__ = _metadata.version("gemma-chat")  # pyproject.toml holds the only literal

__all__ = [
    "EMBEDDED_MODEL_NAME",
    "VLLMLLM",
    "BackendOverloadedError",
    "BackendUnavailableError",
    "BaseLLM",
    "BrokenLogitsError",
    "ChatMessage",
    "ChatSession",
    "Completion",
    "ConfigurationError",
    "ContextLengthExceededError",
    "CorruptEntryError",
    "FinishReason",
    "GemmaChatError",
    "GemmaLLM",
    "GenerationCancelledError",
    "GenerationConfig",
    "GenerationTimeoutError",
    "HealthCheckProtocol",
    "InMemorySessionRepository",
    "InferenceError",
    "InferenceResponse",
    "InferenceService",
    "InvalidGenerationConfigError",
    "InvalidMessageError",
    "InvalidSchemaError",
    "LLMProtocol",
    "LLMRegistry",
    "LLMState",
    "LogLevel",
    "Message",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelNotLoadedError",
    "NothingToRegenerateError",
    "OpenAICompatibleLLM",
    "OutOfMemoryError",
    "RawCompletionProtocol",
    "ResponseFormat",
    "Role",
    "ServiceState",
    "ServiceStateError",
    "SessionBusyError",
    "SessionConflictError",
    "SessionNotFoundError",
    "SessionRepository",
    "Settings",
    "StreamChunk",
    "StructuredOutputError",
    "TokenUsage",
    "ToolCall",
    "ToolChoice",
    "ToolDefinition",
    "UnknownToolError",
    "ValidationError",
    "__version__",
    "default_registry",
    "get_settings",
    "register_llm",
]


def __getattr__(name: str) -> Any:
    # Adapters import heavy libraries (torch, openai): only when asked for.
    if name == "GemmaLLM":
        from gemma_chat.infrastructure.llm.adapters.local_model import GemmaLLM

        return GemmaLLM
    if name == "OpenAICompatibleLLM":
        from gemma_chat.infrastructure.llm.adapters.openai_compatible import OpenAICompatibleLLM

        return OpenAICompatibleLLM
    if name == "VLLMLLM":
        from gemma_chat.infrastructure.llm.adapters.vllm import VLLMLLM

        return VLLMLLM
    raise AttributeError(f"module 'gemma_chat' has no attribute {name!r}")
