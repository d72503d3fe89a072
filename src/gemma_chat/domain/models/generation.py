"""What a generation is asked to do, and what it returns."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from gemma_chat.domain.errors import InvalidGenerationConfigError, UnknownToolError
from gemma_chat.domain.models.message import TokenUsage
from gemma_chat.domain.models.structured import (
    ResponseFormat,
    ToolCall,
    ToolChoice,
    ToolChoiceMode,
    ToolDefinition,
)

__all__ = [
    "MAX_TOP_LOGPROBS",
    "Completion",
    "FinishReason",
    "GenerationConfig",
    "InferenceResponse",
    "StreamChunk",
    "TokenLogprob",
]

# The most alternatives a token's log probability entry lists (OpenAI's limit).
MAX_TOP_LOGPROBS = 20


class FinishReason(StrEnum):
    STOP = "stop"  # the model ended its turn or a stop sequence was reached
    LENGTH = "length"  # max_new_tokens was reached
    CANCELLED = "cancelled"  # the caller stopped the generation
    TOOL_CALLS = "tool_calls"  # the model called tools (the answer's ``tool_calls``)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One generated token's text and natural-log probability, and the ``top`` alternatives
    (text, log probability) the model gave most probability to at that step, best first."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class GenerationConfig:
    """Sampling parameters of one request, validated on construction.

    ``temperature == 0`` means greedy decoding; ``top_k == 0`` and ``top_p == 1`` switch those
    filters off. ``response_format`` constrains the answer's text; ``tools`` are functions the
    model may call, as ``tool_choice`` says (None: ``auto`` when there are tools).
    ``logprobs``: None for none; else each generated token's log probability with that many
    (0 to ``MAX_TOP_LOGPROBS``) most probable alternatives.
    """

    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 64
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None
    repetition_penalty: float = 1.0
    response_format: ResponseFormat | None = None
    tools: tuple[ToolDefinition, ...] = ()
    tool_choice: ToolChoice | None = None
    logprobs: int | None = None

    def __post_init__(self) -> None:
        self._check_structured()
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif isinstance(self.stop, list | tuple):
            object.__setattr__(self, "stop", tuple(self.stop))
        _check(
            _is_number(self.temperature) and 0.0 <= self.temperature <= 2.0,
            "temperature",
            self.temperature,
            "a number from 0 to 2 (0 = greedy)",
        )
        _check(
            _is_number(self.top_p) and 0.0 < self.top_p <= 1.0,
            "top_p",
            self.top_p,
            "a number greater than 0 and at most 1",
        )
        _check(_is_int(self.top_k) and self.top_k >= 0, "top_k", self.top_k, "an integer >= 0")
        _check(
            _is_int(self.max_new_tokens) and self.max_new_tokens >= 1,
            "max_new_tokens",
            self.max_new_tokens,
            "an integer >= 1",
        )
        _check(
            isinstance(self.stop, tuple) and all(isinstance(s, str) and s for s in self.stop),
            "stop",
            self.stop,
            "a list of non-empty strings",
        )
        _check(
            self.seed is None or (_is_int(self.seed) and 0 <= self.seed < 2**63),
            "seed",
            self.seed,
            "an integer from 0 to 2**63 - 1, or None",
        )
        _check(
            _is_number(self.repetition_penalty) and 0.0 < self.repetition_penalty <= 10.0,
            "repetition_penalty",
            self.repetition_penalty,
            "a number greater than 0 and at most 10 (1 = off)",
        )
        _check(
            self.logprobs is None
            or (_is_int(self.logprobs) and 0 <= self.logprobs <= MAX_TOP_LOGPROBS),
            "logprobs",
            self.logprobs,
            f"an integer from 0 to {MAX_TOP_LOGPROBS} (alternatives per token), or None",
        )
        # Store plain floats: 1 and 1.0 must give the same cache key.
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "top_p", float(self.top_p))
        object.__setattr__(self, "repetition_penalty", float(self.repetition_penalty))

    def _check_structured(self) -> None:
        if self.response_format is not None and not isinstance(
            self.response_format, ResponseFormat
        ):
            raise InvalidGenerationConfigError(
                f"response_format must be a ResponseFormat, got "
                f"{type(self.response_format).__name__}.",
                field="response_format",
            )
        if isinstance(self.tools, list):
            object.__setattr__(self, "tools", tuple(self.tools))
        if not isinstance(self.tools, tuple) or not all(
            isinstance(t, ToolDefinition) for t in self.tools
        ):
            raise InvalidGenerationConfigError(
                "tools must be a list of ToolDefinition values.", field="tools"
            )
        names = [t.name for t in self.tools]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise InvalidGenerationConfigError(
                f"Two tools are named {duplicates[0]!r}: tool names must be unique.",
                field="tools",
            )
        if self.tool_choice is not None:
            object.__setattr__(self, "tool_choice", ToolChoice.parse(self.tool_choice))
            choice = self.tool_choice
            assert choice is not None
            if choice.mode in (ToolChoiceMode.REQUIRED, ToolChoiceMode.NAMED) and not self.tools:
                raise InvalidGenerationConfigError(
                    f"tool_choice={choice.name or choice.mode.value!r} needs tools.",
                    field="tool_choice",
                )
            if choice.mode is ToolChoiceMode.NAMED and choice.name not in names:
                raise UnknownToolError(str(choice.name), names)

    @property
    def tool_mode(self) -> ToolChoiceMode:
        """How the model may use tools: ``none`` without tools, ``auto`` unless chosen."""
        if not self.tools:
            return ToolChoiceMode.NONE
        return self.tool_choice.mode if self.tool_choice is not None else ToolChoiceMode.AUTO

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def is_deterministic(self) -> bool:
        """Whether the same input always gives the same output (greedy, or sampling with a seed)."""
        return self.is_greedy or self.seed is not None

    def with_overrides(self, **overrides: Any) -> GenerationConfig:
        """A copy with some fields replaced; ``None`` values are ignored, unknown names rejected."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise InvalidGenerationConfigError(
                f"Unknown generation parameter(s) {', '.join(unknown)}: "
                f"accepted are {', '.join(sorted(names))}."
            )
        changes = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; the structured-output fields and ``logprobs`` only when set."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)} | {
            "stop": list(self.stop)
        }
        for name in _STRUCTURED:
            del data[name]
        if self.logprobs is None:  # keys of answers cached before logprobs existed still match
            del data["logprobs"]
        if self.response_format is not None:
            data["response_format"] = self.response_format.to_dict()
        if self.tools:
            data["tools"] = [t.to_openai() for t in self.tools]
        if self.tool_choice is not None:
            data["tool_choice"] = self.tool_choice.to_openai()
        return data


_STRUCTURED = ("response_format", "tools", "tool_choice")


def _check(ok: bool, name: str, value: object, expected: str) -> None:
    if not ok:
        raise InvalidGenerationConfigError(
            f"Invalid {name}={value!r}: expected {expected}.", field=name
        )


@dataclass(frozen=True, slots=True)
class Completion:
    """What an LLM returns for one prompt."""

    text: str
    finish_reason: FinishReason = FinishReason.STOP
    token_usage: TokenUsage = field(default_factory=TokenUsage)
    tool_calls: tuple[ToolCall, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()  # with ``GenerationConfig.logprobs``


@dataclass(frozen=True, slots=True)
class StreamChunk:
    """A piece of a streamed answer; the last one carries ``finish_reason`` and ``token_usage``,
    and the answer's ``tool_calls`` when the model called tools. ``logprobs``: the entries of
    the tokens whose text this chunk carries (the last chunk: all not yet sent)."""

    text: str
    finish_reason: FinishReason | None = None
    token_usage: TokenUsage | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()

    @property
    def is_final(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True, slots=True)
class InferenceResponse:
    """One completed assistant turn, as ``InferenceService`` returns it.

    ``tool_calls``: the calls the model made (``finish_reason`` is then ``tool_calls``);
    ``parsed``: with a ``response_format``, the answer as the object it describes (an
    instance of the pydantic model passed, or the JSON value), else None.
    """

    content: str
    token_usage: TokenUsage
    finish_reason: FinishReason
    model: str
    latency: float  # seconds from request to answer
    session_id: str | None  # None for a stateless chat (nothing stored)
    message_id: str
    cached: bool = False
    tool_calls: tuple[ToolCall, ...] = ()
    parsed: Any = None
    logprobs: tuple[TokenLogprob, ...] = ()  # with ``GenerationConfig.logprobs``

    def to_dict(self) -> dict[str, Any]:
        calls = {"tool_calls": [c.to_openai() for c in self.tool_calls]} if self.tool_calls else {}
        return calls | {
            "content": self.content,
            "token_usage": self.token_usage.to_dict(),
            "finish_reason": self.finish_reason.value,
            "model": self.model,
            "latency": self.latency,
            "session_id": self.session_id,
            "message_id": self.message_id,
            "cached": self.cached,
        }
