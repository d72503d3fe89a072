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
    "ErrorBody",
    "ErrorResponse",
    "FinishName",
    "GenerationRequest",
    "HealthReport",
    "StreamErrorBody",
    "StreamErrorEvent",
    "StreamOptions",
    "UsageInfo",
    "absent",
    "finish_name",
    "new_id",
    "now",
]

FinishName = Literal["stop", "length"]


def finish_name(reason: FinishReason | None) -> FinishName:
    """OpenAI knows stop and length; a cancelled stream has no reader left to tell."""
    return "length" if reason is FinishReason.LENGTH else "stop"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def absent(value: object) -> bool:
    return value is None


# -- requests -------------------------------------------------------------------------------


class ChatMessageIn(BaseModel):
    # strict: a value of the wrong JSON type is refused, never coerced ("1" is not 1).
    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "developer", "user", "assistant"]
    content: str


class StreamOptions(BaseModel):
    include_usage: bool = False


class GenerationRequest(BaseModel):
    """The generation parameters every generating route takes."""

    model_config = ConfigDict(extra="ignore", strict=True)

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
