"""``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models``: requests, responses and
stream chunks. A field marked ``exclude_if=absent`` is left out of a chunk's JSON when it is None
(OpenAI's deltas carry only what changed); every other field is always there."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from gemma_chat.server.protocol.common import (
    ChatGenerationRequest,
    ChatMessageIn,
    FinishName,
    GenerationRequest,
    StreamOptions,
    UsageInfo,
    absent,
)

__all__ = [
    "ChatCompletionChoice",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "ChatCompletionUsageChunk",
    "ChatMessageOut",
    "ChunkChoice",
    "CompletionChoice",
    "CompletionChunk",
    "CompletionChunkChoice",
    "CompletionRequest",
    "CompletionResponse",
    "CompletionUsageChunk",
    "DeltaMessage",
    "ModelCard",
    "ModelList",
]


class ChatCompletionRequest(ChatGenerationRequest):
    messages: list[ChatMessageIn] = Field(min_length=1)
    n: int = 1
    stream_options: StreamOptions | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(GenerationRequest):
    prompt: str | list[str]
    max_tokens: int | None = 16  # OpenAI's default for /v1/completions
    n: int = 1
    stream_options: StreamOptions | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


# -- /v1/models -----------------------------------------------------------------------------


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "gemma-chat"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# -- /v1/chat/completions -------------------------------------------------------------------


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatCompletionChoice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    finish_reason: FinishName
    logprobs: None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: UsageInfo | None


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = Field(default=None, exclude_if=absent)
    content: str | None = Field(default=None, exclude_if=absent)


class ChunkChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    finish_reason: FinishName | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]


class ChatCompletionUsageChunk(ChatCompletionChunk):
    """The last chunk when ``stream_options.include_usage``: no choices, the usage."""

    usage: UsageInfo | None


# -- /v1/completions ------------------------------------------------------------------------


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: FinishName
    logprobs: None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None


class CompletionChunkChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: FinishName | None = None
    logprobs: None = None


class CompletionChunk(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChunkChoice]


class CompletionUsageChunk(CompletionChunk):
    usage: UsageInfo | None
