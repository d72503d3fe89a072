"""Request bodies in OpenAI's shapes (responses are built as plain dicts in the routes)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ChatCompletionRequest",
    "ChatMessageIn",
    "CompletionRequest",
    "SessionCreate",
    "SessionMessageRequest",
    "StreamOptions",
]


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Generation(BaseModel):
    """The generation parameters every generating route takes."""

    model_config = ConfigDict(extra="ignore")

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

    def generation_parameters(self, served_model: str) -> dict[str, Any]:
        """Keyword arguments for InferenceService; ``model`` only when another one is named."""
        parameters: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": self._max_new_tokens(),
            "stop": [self.stop] if isinstance(self.stop, str) else self.stop,
            "seed": self.seed,
            "top_k": self.top_k,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.model and self.model != served_model:
            parameters["model"] = self.model
        return parameters

    def _max_new_tokens(self) -> int | None:
        return self.max_tokens


class _ChatGeneration(_Generation):
    max_completion_tokens: int | None = None  # OpenAI's newer name for max_tokens

    def _max_new_tokens(self) -> int | None:
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens


class ChatCompletionRequest(_ChatGeneration):
    messages: list[ChatMessageIn] = Field(min_length=1)
    n: int = 1
    stream_options: StreamOptions | None = None


class CompletionRequest(_Generation):
    prompt: str | list[str]
    max_tokens: int | None = 16  # OpenAI's default for /v1/completions
    n: int = 1
    stream_options: StreamOptions | None = None


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = "New Chat"
    system_prompt: str | None = None
    metadata: dict[str, object] = Field(default_factory=dict)


class SessionMessageRequest(_ChatGeneration):
    model_config = ConfigDict(extra="forbid")

    content: str
