"""Messages of a conversation and the tokens they cost."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NotRequired, TypedDict

from gemma_chat.domain.errors import InvalidMessageError
from gemma_chat.domain.models.structured import ToolCall

# C0 controls other than tab, newline and carriage return, and DEL: never text a model reads.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Lone surrogates are not Unicode characters: UTF-8 cannot encode them, so neither SQLite nor a
# tokenizer can take them.
_SURROGATE = re.compile("[\ud800-\udfff]")

__all__ = [
    "ChatMessage",
    "Message",
    "Role",
    "TokenUsage",
    "utc_now",
    "validate_content",
    "validate_text",
]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Role(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"  # a tool's result, answering an assistant's tool call

    @classmethod
    def parse(cls, value: object) -> Role:
        try:
            return cls(str(value))
        except ValueError:
            accepted = ", ".join(r.value for r in cls)
            raise InvalidMessageError(f"Unknown role {value!r}: use one of {accepted}.") from None


class ChatMessage(TypedDict):
    """A message as LLMs take it: OpenAI's ``{"role": ..., "content": ...}`` shape; an
    assistant's message may carry ``tool_calls`` (OpenAI's shape), a tool's result names the
    call it answers (``tool_call_id``)."""

    role: str
    content: str
    tool_calls: NotRequired[list[dict[str, Any]]]
    tool_call_id: NotRequired[str]


@dataclass(frozen=True, slots=True)
class TokenUsage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __post_init__(self) -> None:
        for name in ("prompt_tokens", "completion_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidMessageError(
                    f"TokenUsage.{name} must be an integer >= 0, got {value!r}."
                )

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )

    def to_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenUsage:
        # No int() coercion: stored garbage (1.9, "5", inf) is rejected, not silently changed.
        return cls(data["prompt_tokens"], data["completion_tokens"])


def validate_text(text: object, *, what: str) -> str:
    """Check a string the domain stores or shows a model (a title, a system prompt, metadata):
    valid Unicode and no NUL character. The error names the field (``what``) and never repeats
    the bad text, so that it can itself be encoded."""
    if not isinstance(text, str):
        raise InvalidMessageError(
            f"{what} must be a string, got {type(text).__name__}.", field=_field(what)
        )
    _reject_surrogates(text, what)
    nul = text.find("\x00")
    if nul >= 0:
        raise InvalidMessageError(
            f"{what} contains a NUL character (U+0000) at {nul}: remove it.", field=_field(what)
        )
    return text


def _field(what: str) -> str | None:
    """``what`` when it names a parameter (``user_message``, ``messages[0].content``), not a
    description (``Message content``)."""
    return None if " " in what else what


def _reject_surrogates(text: str, what: str) -> None:
    surrogate = _SURROGATE.search(text)
    if surrogate is not None:
        raise InvalidMessageError(
            f"{what} contains the lone surrogate U+{ord(surrogate.group()):04X} at "
            f"{surrogate.start()}, which is not valid Unicode: send text as UTF-8.",
            field=_field(what),
        )


def validate_content(
    content: object,
    *,
    what: str = "Message content",
    allow_empty: bool = False,
    model_output: bool = False,
) -> str:
    """Check text a client sent. ``model_output``: text a model wrote, which may be empty and
    may hold control characters (it is stored as it was, and must not poison the history)."""
    if not isinstance(content, str):
        raise InvalidMessageError(
            f"{what} must be a string, got {type(content).__name__}.", field=_field(what)
        )
    _reject_surrogates(content, what)  # a model's own output never has them (it is decoded)
    if not (allow_empty or model_output) and not content.strip():
        raise InvalidMessageError(f"{what} must not be empty.", field=_field(what))
    if model_output:
        return content
    control = _CONTROL.search(content)
    if control is not None:
        raise InvalidMessageError(
            f"{what} contains the control character U+{ord(control.group()):04X} at "
            f"{control.start()}: remove it (tabs and newlines are fine).",
            field=_field(what),
        )
    return content


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: datetime = field(default_factory=utc_now)
    token_count: int | None = None
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant's calls
    tool_call_id: str | None = None  # the call a tool message answers

    def __post_init__(self) -> None:
        object.__setattr__(self, "role", Role.parse(self.role))
        # A model may answer nothing (it ended its turn at once), or odd bytes: kept as written;
        # a tool's result is what the tool returned.
        validate_content(self.content, model_output=self.role in (Role.ASSISTANT, Role.TOOL))
        object.__setattr__(self, "tool_calls", tuple(self.tool_calls))
        if self.tool_calls and self.role is not Role.ASSISTANT:
            raise InvalidMessageError("Only an assistant message has tool calls.")
        if not all(isinstance(c, ToolCall) for c in self.tool_calls):
            raise InvalidMessageError("tool_calls must be ToolCall values.")
        if (self.role is Role.TOOL) != (self.tool_call_id is not None):
            raise InvalidMessageError(
                "A tool message, and only a tool message, names the call it answers "
                "(tool_call_id)."
            )
        if self.tool_call_id is not None and (
            not isinstance(self.tool_call_id, str) or not self.tool_call_id
        ):
            raise InvalidMessageError("tool_call_id must be a non-empty string.")
        if not isinstance(self.id, str) or not self.id:
            raise InvalidMessageError(f"A message id must be a non-empty string, got {self.id!r}.")
        if self.token_count is not None and (
            isinstance(self.token_count, bool)
            or not isinstance(self.token_count, int)
            or self.token_count < 0
        ):
            raise InvalidMessageError(
                f"token_count must be an integer >= 0, got {self.token_count!r}."
            )

    def to_chat_message(self) -> ChatMessage:
        message: ChatMessage = {"role": self.role.value, "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [c.to_openai() for c in self.tool_calls]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "role": self.role.value,
            "content": self.content,
            "created_at": self.created_at.isoformat(),
            "token_count": self.token_count,
        }
        if self.tool_calls:
            data["tool_calls"] = [c.to_openai() for c in self.tool_calls]
        if self.tool_call_id is not None:
            data["tool_call_id"] = self.tool_call_id
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Message:
        return cls(
            role=Role.parse(data["role"]),
            content=data["content"],
            id=data["id"],
            created_at=datetime.fromisoformat(data["created_at"]),
            token_count=data.get("token_count"),
            tool_calls=tuple(ToolCall.from_openai(c) for c in data.get("tool_calls") or ()),
            tool_call_id=data.get("tool_call_id"),
        )
