"""``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models``: requests, responses and
stream chunks. A field marked ``exclude_if=absent`` is left out of a chunk's JSON when it is None
(OpenAI's deltas carry only what changed); every other field is always there."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from gemma_chat.domain.models import ToolCall
from gemma_chat.domain.models.generation import MAX_TOP_LOGPROBS
from gemma_chat.server.protocol.common import (
    ChatGenerationRequest,
    ChatMessageIn,
    FinishName,
    GenerationRequest,
    StreamOptions,
    UsageInfo,
    absent,
)
from gemma_chat.server.protocol.logprobs import ChoiceLogprobs, CompletionLogprobs
from gemma_chat.server.protocol.tools import (
    FunctionCallDelta,
    FunctionCallOut,
    ResponseFormat,
    ToolCallDelta,
    ToolCallOut,
    ToolChoice,
    ToolDefinition,
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
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    modalities: list[Literal["text"]] | None = None

    def structured_parameters(self) -> dict[str, Any]:
        """``response_format``, ``tools`` and ``tool_choice`` as the service takes them (the
        library reads OpenAI's dict shapes)."""
        choice = self.tool_choice
        return {
            "response_format": (
                self.response_format.model_dump(by_alias=True, exclude_none=True)
                if self.response_format is not None
                else None
            ),
            "tools": (
                [tool.model_dump(exclude_none=True) for tool in self.tools] if self.tools else None
            ),
            "tool_choice": choice.model_dump() if isinstance(choice, BaseModel) else choice,
        }

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def logprob_alternatives(self) -> int | None:
        """The alternatives per token asked for (None: no log probabilities)."""
        return (self.top_logprobs or 0) if self.logprobs else None

    def unsupported_value(self) -> tuple[str, str] | None:
        top = self.top_logprobs
        if top is not None and not self.logprobs:
            return "top_logprobs", "top_logprobs needs logprobs: true."
        if top is not None and not 0 <= top <= MAX_TOP_LOGPROBS:
            return "top_logprobs", f"top_logprobs must be from 0 to {MAX_TOP_LOGPROBS}."
        return super().unsupported_value()


class CompletionRequest(GenerationRequest):
    prompt: str | list[str]
    max_tokens: int | None = 16  # OpenAI's default for /v1/completions
    n: int = 1
    stream_options: StreamOptions | None = None
    logprobs: int | None = None
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None

    def unsupported_value(self) -> tuple[str, str] | None:
        if self.echo:
            return "echo", "echo=true is not supported."
        if self.suffix:
            return "suffix", "suffix (insertion) is not supported."
        if self.best_of not in (None, 1):
            return "best_of", "best_of is not supported; n is."
        return super().unsupported_value()

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
    content: str | None
    tool_calls: list[ToolCallOut] | None = Field(default=None, exclude_if=absent)
    refusal: None = None

    @classmethod
    def of(cls, text: str, calls: tuple[ToolCall, ...]) -> ChatMessageOut:
        """OpenAI's assistant message: with calls, ``tool_calls`` and the text or null."""
        if not calls:
            return cls(content=text)
        return cls(
            content=text or None,
            tool_calls=[
                ToolCallOut(id=c.id, function=FunctionCallOut(name=c.name, arguments=c.arguments))
                for c in calls
            ],
        )


class ChatCompletionChoice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    finish_reason: FinishName
    logprobs: ChoiceLogprobs | None = None


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
    tool_calls: list[ToolCallDelta] | None = Field(default=None, exclude_if=absent)

    @classmethod
    def tool_call_deltas(cls, calls: tuple[ToolCall, ...]) -> list[DeltaMessage]:
        """Calls as OpenAI streams them: each one's id, type and name, then its arguments."""
        deltas: list[DeltaMessage] = []
        for index, call in enumerate(calls):
            head = ToolCallDelta(
                index=index,
                id=call.id,
                type="function",
                function=FunctionCallDelta(name=call.name, arguments=""),
            )
            body = ToolCallDelta(index=index, function=FunctionCallDelta(arguments=call.arguments))
            deltas += [cls(tool_calls=[head]), cls(tool_calls=[body])]
        return deltas


class ChunkChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    finish_reason: FinishName | None = None
    logprobs: ChoiceLogprobs | None = None


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
    logprobs: CompletionLogprobs | None = None


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
    logprobs: CompletionLogprobs | None = None


class CompletionChunk(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChunkChoice]


class CompletionUsageChunk(CompletionChunk):
    usage: UsageInfo | None
