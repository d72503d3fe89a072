"""Domain models: standard library only."""

from gemma_chat.domain.models.generation import (
    Completion,
    FinishReason,
    GenerationConfig,
    InferenceResponse,
    StreamChunk,
    TokenLogprob,
)
from gemma_chat.domain.models.message import ChatMessage, Message, Role, TokenUsage
from gemma_chat.domain.models.session import ChatSession
from gemma_chat.domain.models.structured import (
    ResponseFormat,
    ResponseFormatKind,
    ToolCall,
    ToolChoice,
    ToolChoiceMode,
    ToolDefinition,
)

__all__ = [
    "ChatMessage",
    "ChatSession",
    "Completion",
    "FinishReason",
    "GenerationConfig",
    "InferenceResponse",
    "Message",
    "ResponseFormat",
    "ResponseFormatKind",
    "Role",
    "StreamChunk",
    "TokenLogprob",
    "TokenUsage",
    "ToolCall",
    "ToolChoice",
    "ToolChoiceMode",
    "ToolDefinition",
]
