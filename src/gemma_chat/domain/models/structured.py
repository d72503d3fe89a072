"""Structured output and tool calling: what an answer must look like, the tools a model may call,
and the calls it made (standard library only).

``ResponseFormat`` constrains an answer's text (a JSON schema, any JSON object, a regular
expression, one of some strings, or a grammar). ``ToolDefinition`` is a function a model may
call (OpenAI's function schema); ``ToolChoice`` says whether it may, must, or must call one
named tool; ``ToolCall`` is a call a model made (its arguments as JSON text, as OpenAI sends
them).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from gemma_chat.domain.errors import InvalidGenerationConfigError, InvalidMessageError

__all__ = [
    "ResponseFormat",
    "ResponseFormatKind",
    "ToolCall",
    "ToolChoice",
    "ToolChoiceMode",
    "ToolDefinition",
]

# OpenAI's rule for function names.
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ResponseFormatKind(StrEnum):
    JSON_SCHEMA = "json_schema"  # a JSON value valid under a schema
    JSON_OBJECT = "json_object"  # any JSON object
    REGEX = "regex"  # text matching a regular expression (whole)
    CHOICE = "choice"  # exactly one of some strings
    GRAMMAR = "grammar"  # text of a grammar (EBNF, the GBNF dialect llama.cpp reads)


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """What an answer's text must be; build one with the class methods.

    The grammar library checks a schema, pattern or grammar when the request runs; an invalid
    one is an ``InvalidSchemaError``.
    """

    kind: ResponseFormatKind
    schema: Mapping[str, Any] | None = None
    pattern: str | None = None
    choices: tuple[str, ...] = ()
    grammar: str | None = None
    name: str = "response"
    strict: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", _parse_kind(self.kind))
        needs = {
            ResponseFormatKind.JSON_SCHEMA: ("schema", self.schema),
            ResponseFormatKind.REGEX: ("pattern", self.pattern),
            ResponseFormatKind.GRAMMAR: ("grammar", self.grammar),
        }.get(self.kind)
        if needs is not None and needs[1] is None:
            raise InvalidGenerationConfigError(
                f"A {self.kind.value} response format needs its {needs[0]}.",
                field="response_format",
            )
        if self.schema is not None:
            if not isinstance(self.schema, Mapping):
                raise InvalidGenerationConfigError(
                    f"response_format's schema must be a dict (a JSON schema), got "
                    f"{type(self.schema).__name__}.",
                    field="response_format",
                )
            try:  # stored and cached as JSON: it must be JSON
                json.dumps(self.schema)
            except (TypeError, ValueError) as exc:
                raise InvalidGenerationConfigError(
                    f"response_format's schema is not JSON: {exc}.", field="response_format"
                ) from None
        for what, text in (("pattern", self.pattern), ("grammar", self.grammar)):
            if text is not None and (not isinstance(text, str) or not text):
                raise InvalidGenerationConfigError(
                    f"response_format's {what} must be a non-empty string.",
                    field="response_format",
                )
        object.__setattr__(self, "choices", tuple(self.choices))
        if self.kind is ResponseFormatKind.CHOICE and (
            not self.choices or not all(isinstance(c, str) and c for c in self.choices)
        ):
            raise InvalidGenerationConfigError(
                "A choice response format needs a list of non-empty strings.",
                field="response_format",
            )
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise InvalidGenerationConfigError(
                f"response_format's name {self.name!r} must be 1-64 letters, digits, '_' or '-'.",
                field="response_format",
            )

    @classmethod
    def json_schema(
        cls, schema: Mapping[str, Any], *, name: str = "response", strict: bool = True
    ) -> ResponseFormat:
        return cls(ResponseFormatKind.JSON_SCHEMA, schema=dict(schema), name=name, strict=strict)

    @classmethod
    def json_object(cls) -> ResponseFormat:
        return cls(ResponseFormatKind.JSON_OBJECT)

    @classmethod
    def regex(cls, pattern: str) -> ResponseFormat:
        return cls(ResponseFormatKind.REGEX, pattern=pattern)

    @classmethod
    def choice(cls, choices: Iterable[str]) -> ResponseFormat:
        return cls(ResponseFormatKind.CHOICE, choices=tuple(choices))

    @classmethod
    def from_grammar(cls, grammar: str) -> ResponseFormat:
        """Text of an EBNF grammar whose rule ``root`` is the answer."""
        return cls(ResponseFormatKind.GRAMMAR, grammar=grammar)

    @property
    def is_json(self) -> bool:
        return self.kind in (ResponseFormatKind.JSON_SCHEMA, ResponseFormatKind.JSON_OBJECT)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind.value}
        if self.schema is not None:
            data |= {"schema": dict(self.schema), "name": self.name, "strict": self.strict}
        if self.pattern is not None:
            data["pattern"] = self.pattern
        if self.choices:
            data["choices"] = list(self.choices)
        if self.grammar is not None:
            data["grammar"] = self.grammar
        return data


def _parse_kind(value: object) -> ResponseFormatKind:
    try:
        return ResponseFormatKind(str(value))
    except ValueError:
        accepted = ", ".join(k.value for k in ResponseFormatKind)
        raise InvalidGenerationConfigError(
            f"Unknown response format {value!r}: use one of {accepted}.", field="response_format"
        ) from None


@dataclass(frozen=True, slots=True)
class ToolDefinition:
    """A function a model may call: OpenAI's ``{"type": "function", "function": {...}}``."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise InvalidGenerationConfigError(
                f"Tool name {self.name!r} must be 1-64 letters, digits, '_' or '-'.", field="tools"
            )
        if not isinstance(self.description, str):
            raise InvalidGenerationConfigError(
                f"Tool {self.name!r}: description must be a string.", field="tools"
            )
        if not isinstance(self.parameters, Mapping) or self.parameters.get("type", "object") != (
            "object"
        ):
            raise InvalidGenerationConfigError(
                f"Tool {self.name!r}: parameters must be a JSON schema of type 'object'.",
                field="tools",
            )

    @classmethod
    def from_openai(cls, tool: Mapping[str, Any]) -> ToolDefinition:
        """From OpenAI's ``{"type": "function", "function": {"name", "description",
        "parameters"}}`` (or the inner function dict alone)."""
        if not isinstance(tool, Mapping):
            raise InvalidGenerationConfigError(
                f"A tool must be a function schema dict, got {type(tool).__name__}.", field="tools"
            )
        if "function" in tool:
            if tool.get("type", "function") != "function":
                raise InvalidGenerationConfigError(
                    f"Tool type {tool.get('type')!r}: only 'function' tools exist.", field="tools"
                )
            tool = tool["function"]
            if not isinstance(tool, Mapping):
                raise InvalidGenerationConfigError("A tool's 'function' must be a dict.")
        if "name" not in tool:
            raise InvalidGenerationConfigError("A tool needs a 'name'.", field="tools")
        return cls(
            name=tool["name"],
            description=tool.get("description") or "",
            parameters=dict(tool.get("parameters") or {"type": "object", "properties": {}}),
        )

    def to_openai(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": dict(self.parameters),
            },
        }


class ToolChoiceMode(StrEnum):
    AUTO = "auto"  # the model answers in text or calls tools
    NONE = "none"  # the model answers in text
    REQUIRED = "required"  # the model calls at least one tool
    NAMED = "named"  # the model calls ``name``


@dataclass(frozen=True, slots=True)
class ToolChoice:
    mode: ToolChoiceMode = ToolChoiceMode.AUTO
    name: str | None = None

    @classmethod
    def parse(cls, value: object) -> ToolChoice:
        """From ``"auto"``, ``"none"``, ``"required"``, a tool's name, or OpenAI's
        ``{"type": "function", "function": {"name": ...}}``."""
        if isinstance(value, ToolChoice):
            return value
        if value is None:
            return cls()
        if isinstance(value, Mapping):
            function = value.get("function")
            if isinstance(function, Mapping) and isinstance(function.get("name"), str):
                return cls(ToolChoiceMode.NAMED, function["name"])
            raise InvalidGenerationConfigError(
                "tool_choice as a dict must be {'type': 'function', 'function': {'name': ...}}.",
                field="tool_choice",
            )
        if isinstance(value, str) and value:
            if value in (ToolChoiceMode.AUTO, ToolChoiceMode.NONE, ToolChoiceMode.REQUIRED):
                return cls(ToolChoiceMode(value))
            return cls(ToolChoiceMode.NAMED, value)
        raise InvalidGenerationConfigError(
            f"tool_choice {value!r}: use 'auto', 'none', 'required' or a tool's name.",
            field="tool_choice",
        )

    def to_openai(self) -> str | dict[str, Any]:
        if self.mode is ToolChoiceMode.NAMED:
            return {"type": "function", "function": {"name": self.name}}
        return self.mode.value


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call a model made: the tool's name and its arguments as JSON text."""

    name: str
    arguments: str = "{}"
    id: str = field(default_factory=lambda: "call_" + uuid.uuid4().hex[:24])

    def __post_init__(self) -> None:
        for what, value in (("name", self.name), ("id", self.id)):
            if not isinstance(value, str) or not value:
                raise InvalidMessageError(f"A tool call's {what} must be a non-empty string.")
        if not isinstance(self.arguments, str):
            raise InvalidMessageError(
                f"A tool call's arguments must be JSON text, got {type(self.arguments).__name__}."
            )

    def parsed_arguments(self) -> Any:
        """The arguments as Python values (``InvalidMessageError`` if they are not JSON)."""
        try:
            return json.loads(self.arguments)
        except ValueError as exc:
            raise InvalidMessageError(
                f"Tool call {self.id!r} to {self.name!r}: arguments are not JSON ({exc})."
            ) from None

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }

    @classmethod
    def from_openai(cls, data: Mapping[str, Any], *, where: str = "tool_calls") -> ToolCall:
        """From OpenAI's ``{"id", "type": "function", "function": {"name", "arguments"}}``."""
        function = data.get("function") if isinstance(data, Mapping) else None
        if not isinstance(function, Mapping):
            raise InvalidMessageError(
                f"{where} must be {{'id', 'type': 'function', 'function': {{'name', "
                "'arguments'}}}.",
                field=where,
            )
        arguments = function.get("arguments", "{}")
        if isinstance(arguments, Mapping):  # some clients send an object, not its JSON text
            arguments = json.dumps(arguments, ensure_ascii=False)
        call_id = data.get("id") or "call_" + uuid.uuid4().hex[:24]
        try:
            return cls(name=function.get("name"), arguments=arguments, id=call_id)  # type: ignore[arg-type]
        except InvalidMessageError as exc:
            raise InvalidMessageError(f"{where}: {exc}", field=where) from None


def tool_calls_from_openai(
    calls: Sequence[Mapping[str, Any]] | None, *, where: str
) -> tuple[ToolCall, ...]:
    if calls is None:
        return ()
    if isinstance(calls, str | bytes) or not isinstance(calls, Sequence):
        raise InvalidMessageError(f"{where} must be a list of tool calls.", field=where)
    return tuple(ToolCall.from_openai(c, where=f"{where}[{i}]") for i, c in enumerate(calls))
