"""What every API shares: generation parameters, usage, errors, health, ids."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from gemma_chat.domain.models import FinishReason, TokenUsage

__all__ = [
    "ChatGenerationRequest",
    "ChatMessageIn",
    "ContentPart",
    "ErrorBody",
    "ErrorResponse",
    "FinishName",
    "FunctionCallIn",
    "GenerationRequest",
    "HealthReport",
    "StreamErrorBody",
    "StreamErrorEvent",
    "StreamOptions",
    "ToolCallIn",
    "UsageInfo",
    "absent",
    "finish_name",
    "new_id",
    "now",
]

FinishName = Literal["stop", "length", "tool_calls"]


def finish_name(reason: FinishReason | None) -> FinishName:
    """OpenAI knows stop, length and tool_calls; a cancelled stream has no reader left to
    tell."""
    if reason is FinishReason.LENGTH:
        return "length"
    return "tool_calls" if reason is FinishReason.TOOL_CALLS else "stop"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def absent(value: object) -> bool:
    return value is None


# -- requests -------------------------------------------------------------------------------


class ContentPart(BaseModel):
    """One part of a message's ``content`` list. Only ``text`` parts are read; any other type
    (``image_url``, ``input_audio``, ``file``) is refused by the route, naming the part."""

    model_config = ConfigDict(extra="allow", strict=True)

    type: str
    text: str | None = None


class FunctionCallIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCallIn(BaseModel):
    """A call the assistant made earlier in the conversation."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(BaseModel):
    # strict: a value of the wrong JSON type is refused, never coerced ("1" is not 1). forbid: a
    # field this server does not read is refused, never silently ignored.
    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    # None only on an assistant message that made tool calls (the route checks it).
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None  # on a tool message: the call it answers
    refusal: str | None = None  # OpenAI echoes it back on assistant messages; always None here


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool = False


class GenerationRequest(BaseModel):
    """The generation parameters every generating route takes. A field not declared here is a
    400 naming it (see ``server.errors``); the declared ones that only OpenAI's neutral value is
    accepted for are checked by ``unsupported_value``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    # Not in OpenAI's API; vLLM's names for them (gemma-chat's OpenAICompatibleLLM sends them).
    top_k: int | None = None
    repetition_penalty: float | None = None
    stream: bool = False
    # OpenAI's fields that change nothing here at their neutral value; any other value is a 400.
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    # Identify the caller; they change no output (OpenAI uses them for abuse monitoring).
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None

    def unsupported_value(self) -> tuple[str, str] | None:
        """``(field, reason)`` of the first field set to a value this server cannot honour."""
        for name in ("frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            if value not in (None, 0, 0.0):
                return name, f"{name} is not supported; repetition_penalty is (vLLM's name)."
        if self.logit_bias:
            return "logit_bias", "logit_bias is not supported."
        if self.store:
            return "store", "store=true is not supported: nothing is stored for later retrieval."
        if self.service_tier not in (None, "auto", "default"):
            return "service_tier", f"service_tier {self.service_tier!r} is not supported."
        return None

    def generation_parameters(self, other_model: str | None) -> dict[str, Any]:
        """Keyword arguments for InferenceService; ``other_model``: a model other than the
        service's own that the request named and the server allows (``serve_model``)."""
        parameters: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": self._max_new_tokens(),
            "stop": [self.stop] if isinstance(self.stop, str) else self.stop,
            "seed": self.seed,
            "top_k": self.top_k,
            "repetition_penalty": self.repetition_penalty,
        }
        if other_model is not None:
            parameters["model"] = other_model
        return parameters

    def _max_new_tokens(self) -> int | None:
        return self.max_tokens


class ChatGenerationRequest(GenerationRequest):
    max_completion_tokens: int | None = None  # OpenAI's newer name for max_tokens

    def _max_new_tokens(self) -> int | None:
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens


# -- responses ------------------------------------------------------------------------------


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, usage: TokenUsage | None) -> UsageInfo | None:
        return cls(**usage.to_dict()) if usage is not None else None

    @classmethod
    def total(cls, usages: list[TokenUsage | None]) -> UsageInfo | None:
        """n choices of one prompt: the prompt counted once, every choice's tokens."""
        known = [usage for usage in usages if usage is not None]
        if not known:
            return None
        prompt = known[0].prompt_tokens
        completion = sum(usage.completion_tokens for usage in known)
        return cls(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error status's body."""

    error: ErrorBody


class StreamErrorBody(BaseModel):
    message: str
    type: str
    code: str | None = None


class StreamErrorEvent(BaseModel):
    """An error after a stream started (its status line is sent already)."""

    error: StreamErrorBody


class HealthReport(BaseModel):
    status: Literal["loading", "healthy", "degraded", "unhealthy"]
    error: str | None = None
    service_state: str | None = None
    model_info: dict[str, Any] | None = None
    statistics: dict[str, Any] | None = None
    backend_error: str | None = None
