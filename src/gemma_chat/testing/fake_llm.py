"""``FakeLLM``: scripted answers through the real ``BaseLLM`` machinery."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gemma_chat.domain.models import (
    ChatMessage,
    Completion,
    FinishReason,
    GenerationConfig,
    ResponseFormat,
    StreamChunk,
    TokenLogprob,
    TokenUsage,
    ToolCall,
)
from gemma_chat.infrastructure.llm.adapters.base import BaseLLM
from gemma_chat.infrastructure.llm.generation.tool_prompt import call_block
from gemma_chat.shared.config import Settings, get_settings

# What a scripted answer may be: text, a tool call (or several), or a JSON-ready value
# (a dict, a list, a pydantic model instance) answered as JSON.
Scripted = Any

__all__ = ["FakeLLM", "GenerationCall", "create_mock_llm"]


@dataclass(frozen=True, slots=True)
class GenerationCall:
    prompt: str
    kwargs: dict[str, Any]


class FakeLLM(BaseLLM):
    """Answers with ``responses`` in turn (cycling), word by word when streamed.

    A response may be text, a ``ToolCall`` (or a list of them: the model calls those tools, as
    the embedded model would, in the fenced format), or a JSON-ready value (a dict, a list, a
    pydantic model instance: answered as its JSON). With a JSON-schema ``response_format`` and
    an answer that is not JSON, the fake answers the schema's smallest example instead (so
    ``parsed`` works in tests without scripting). ``calls[i].kwargs["response_format"]`` is
    the grammar the request asked for (tools included).

    State to assert on: ``calls``, ``load_count``, ``unload_count``, ``inference_count``.
    Failures to inject: ``fail_with`` (raised by the next generations) and ``fail_after_chunks``
    (raised mid-stream). ``delay`` sleeps before each chunk, to test slow models.

    Log probabilities (``logprobs`` in the config): each word is one token of probability 1/2,
    its alternatives itself and then ``alt1``, ``alt2``... of halving probabilities.
    """

    supports_logprobs = True

    def __init__(
        self,
        responses: Iterable[Scripted] = ("mock response",),
        *,
        model_name: str = "fake-llm",
        settings: Settings | None = None,
        context_length: int | None = None,
        delay: float = 0.0,
        footprint_mb: float = 0.0,
    ) -> None:
        settings = settings if settings is not None else get_settings()
        settings = settings.model_copy(
            update={"model": settings.model.model_copy(update={"name": model_name})}
        )
        super().__init__(settings)
        self.responses = [_scripted_text(r) for r in responses] or [""]
        self._cycle = itertools.cycle(self.responses)
        self._context_length = context_length
        self.delay = delay
        self.footprint_mb = footprint_mb
        self.calls: list[GenerationCall] = []
        self.messages_seen: list[Sequence[ChatMessage]] = []
        self.load_count = 0
        self.unload_count = 0
        self.fail_with: BaseException | None = None
        self.fail_after_chunks: int | None = None
        self.streams_closed = 0

    @property
    def context_length(self) -> int | None:
        return self._context_length

    def _extra_model_info(self) -> dict[str, Any]:
        return {"memory_footprint_mb": self.footprint_mb}

    async def _load_model_implementation(self) -> None:
        self.load_count += 1

    async def _unload_model_implementation(self) -> None:
        self.unload_count += 1

    async def generate(self, messages: Sequence[ChatMessage], config: GenerationConfig) -> Any:
        self.messages_seen.append(list(messages))
        return await super().generate(messages, config)

    def stream(self, messages: Sequence[ChatMessage], config: GenerationConfig) -> Any:
        self.messages_seen.append(list(messages))
        return super().stream(messages, config)

    async def _generate_implementation(self, prompt: str, **kwargs: Any) -> str | Completion:
        self.calls.append(GenerationCall(prompt, kwargs))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_with is not None:
            raise self.fail_with
        text, cut = self._answer(kwargs)
        usage = TokenUsage(self.count_tokens(prompt), self.count_tokens(text))
        logprobs = tuple(
            entry
            for i, word in enumerate(text.split(" "))
            if (entry := _word_logprob(word if i == 0 else " " + word, kwargs)) is not None
        )
        finish = FinishReason.LENGTH if cut else FinishReason.STOP
        return Completion(text, finish, usage, logprobs=logprobs)

    async def _stream_implementation(
        self, prompt: str, **kwargs: Any
    ) -> AsyncIterator[str | StreamChunk]:
        self.calls.append(GenerationCall(prompt, kwargs))
        try:
            if self.fail_with is not None and self.fail_after_chunks is None:
                raise self.fail_with
            text, cut = self._answer(kwargs)
            words = text.split(" ")
            for index, word in enumerate(words):
                if self.fail_after_chunks is not None and index == self.fail_after_chunks:
                    raise self.fail_with or RuntimeError("injected mid-stream failure")
                if self.delay:
                    await asyncio.sleep(self.delay)
                piece = word if index == 0 else " " + word
                entry = _word_logprob(piece, kwargs)
                yield piece if entry is None else StreamChunk(piece, logprobs=(entry,))
            if cut:
                yield StreamChunk("", FinishReason.LENGTH)
        finally:
            self.streams_closed += 1

    def _answer(self, kwargs: dict[str, Any]) -> tuple[str, bool]:
        """The next answer, cut to ``max_new_tokens`` words, and whether it was cut (its
        finish reason is then ``length``, as a model's that ran out of tokens). A JSON answer
        for a JSON response format and a tool call are never cut."""
        text = next(self._cycle)
        fmt = kwargs.get("response_format")
        if isinstance(fmt, ResponseFormat) and fmt.is_json and not _is_json(text):
            return json.dumps(example_of(fmt.schema or {"type": "object"})), False
        if "```tool_call" in text:  # a call is never cut short
            return text, False
        words = text.split(" ")
        limit = kwargs["max_new_tokens"]
        return " ".join(words[:limit]), len(words) > limit


def _word_logprob(piece: str, kwargs: dict[str, Any]) -> TokenLogprob | None:
    """A scripted word's entry (None when the request asks for none)."""
    alternatives = kwargs.get("logprobs")
    if alternatives is None:
        return None
    names = [piece, *(f"alt{i}" for i in range(1, alternatives))][:alternatives]
    top = tuple((name, math.log(0.5) * (i + 1)) for i, name in enumerate(names))
    return TokenLogprob(piece, math.log(0.5), top)


def _scripted_text(response: Scripted) -> str:
    if isinstance(response, str):
        return response
    if isinstance(response, ToolCall):
        return call_block(response)
    if (
        isinstance(response, list | tuple)
        and response
        and all(isinstance(r, ToolCall) for r in response)
    ):
        return "\n".join(call_block(r) for r in response)
    dump = getattr(response, "model_dump_json", None)  # a pydantic model instance
    if callable(dump):
        return str(dump())
    return json.dumps(response, ensure_ascii=False)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def example_of(schema: Mapping[str, Any], root: Mapping[str, Any] | None = None) -> Any:
    """The smallest value valid under a (common) JSON schema: required properties only, empty
    arrays, zeros, empty strings, the first of an enum or of ``anyOf``."""
    root = root if root is not None else schema
    if "$ref" in schema:
        target: Any = root
        for part in str(schema["$ref"]).lstrip("#/").split("/"):
            target = target[part]
        return example_of(target, root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for combined in ("anyOf", "oneOf", "allOf"):
        if schema.get(combined):
            return example_of(schema[combined][0], root)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = kind[0]
    if kind == "object":
        properties = schema.get("properties", {})
        return {k: example_of(properties.get(k, {}), root) for k in schema.get("required", [])}
    if kind == "array":
        return [example_of(schema.get("items", {}), root)] * int(schema.get("minItems", 0))
    if kind == "string":
        return "a" * int(schema.get("minLength", 0))
    if kind in ("integer", "number"):
        minimum = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        return max(0, int(minimum) + (1 if "exclusiveMinimum" in schema else 0))
    if kind == "boolean":
        return False
    return None


def create_mock_llm(response: str = "mock response") -> FakeLLM:
    """A ``FakeLLM`` that always answers ``response``."""
    return FakeLLM([response])
