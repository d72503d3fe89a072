"""What callers pass for structured output and tools, made domain values; and the answer parsed.

``response_format``: a pydantic model (or any type pydantic describes: ``list[int]``), a JSON
schema dict, OpenAI's ``{"type": "json_schema", "json_schema": {...}}`` / ``{"type":
"json_object"}`` / ``{"type": "text"}``, or a ``ResponseFormat``. ``tools``: OpenAI function
schemas, ``ToolDefinition`` values, or Python callables with type hints (their parameters'
schema from the signature, pydantic's way; the docstring's first paragraph describes them).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from gemma_chat.domain.errors import (
    InvalidGenerationConfigError,
    InvalidSchemaError,
    StructuredOutputError,
)
from gemma_chat.domain.models import (
    Completion,
    FinishReason,
    ResponseFormat,
    ToolDefinition,
)

__all__ = ["OutputParser", "ToolSet", "response_format_of", "tools_of"]


@dataclass(frozen=True, slots=True)
class OutputParser:
    """Turns an answer's text into the value its response format describes."""

    response_format: ResponseFormat
    adapter: TypeAdapter[Any] | None = None  # a pydantic-described type's validator

    def parse(self, completion: Completion) -> Any:
        """The answer as a value; ``StructuredOutputError`` when it does not parse (an answer
        cut short by max_new_tokens, or from a backend that could not constrain it)."""
        text = completion.text
        kind = self.response_format.kind
        try:
            if self.response_format.is_json:
                # strict=False: a control character inside a string is taken as it is (the
                # grammar library's length-bounded strings allow them; JSON does not).
                value = json.loads(text, strict=False)
                return value if self.adapter is None else self.adapter.validate_python(value)
            if self.adapter is not None:
                return self.adapter.validate_json(text)
        except (ValueError, PydanticValidationError) as exc:
            cut = (
                " (the answer was cut short by max_new_tokens: raise it)"
                if completion.finish_reason is FinishReason.LENGTH
                else ""
            )
            raise StructuredOutputError(
                f"The answer is not the {kind.value} asked for{cut}: {_first_line(exc)}",
                text=text,
                finish_reason=completion.finish_reason.value,
            ) from None
        return text  # a regex, choice or grammar answer is its text


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def response_format_of(value: object) -> tuple[ResponseFormat | None, OutputParser | None]:
    """The domain's response format for what a caller passed, and the parser of its answers."""
    if value is None:
        return None, None
    if isinstance(value, ResponseFormat):
        return value, OutputParser(value)
    if isinstance(value, Mapping):
        fmt = _from_mapping(value)
        return fmt, (OutputParser(fmt) if fmt is not None else None)
    if isinstance(value, type) or hasattr(value, "__origin__"):
        try:
            adapter: TypeAdapter[Any] = TypeAdapter(value)  # type: ignore[arg-type]
            schema = adapter.json_schema()
        except Exception as exc:  # pydantic's several schema errors: the type has no schema
            raise InvalidSchemaError(
                f"response_format {value!r} has no JSON schema: {_first_line(exc)}",
                field="response_format",
            ) from None
        name = value.__name__ if isinstance(value, type) else "response"
        fmt = ResponseFormat.json_schema(schema, name=_safe_name(name))
        return fmt, OutputParser(fmt, adapter)
    raise InvalidGenerationConfigError(
        "response_format must be a pydantic model (or another type), a JSON schema dict, "
        f"OpenAI's response_format dict or a ResponseFormat, got {type(value).__name__}.",
        field="response_format",
    )


def _from_mapping(value: Mapping[str, Any]) -> ResponseFormat | None:
    kind = value.get("type")
    if kind == "text" and len(value) == 1:
        return None
    if kind == "json_object":
        return ResponseFormat.json_object()
    if kind == "json_schema" and isinstance(value.get("json_schema"), Mapping):
        spec = value["json_schema"]
        schema = spec.get("schema")
        if not isinstance(schema, Mapping):
            raise InvalidSchemaError(
                "response_format.json_schema.schema must be a JSON schema object.",
                field="response_format",
            )
        return ResponseFormat.json_schema(
            schema, name=spec.get("name") or "response", strict=bool(spec.get("strict", True))
        )
    return ResponseFormat.json_schema(value)  # a JSON schema itself


def _safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "_-" else "_" for c in name)[:64]
    return cleaned or "response"


@dataclass(frozen=True)
class ToolSet:
    """The tools of a request, and the Python functions behind those given as callables."""

    definitions: tuple[ToolDefinition, ...] = ()
    functions: Mapping[str, Callable[..., Any]] = field(default_factory=dict)


def tools_of(tools: Sequence[object] | None) -> ToolSet:
    if tools is None:
        return ToolSet()
    if isinstance(tools, str | bytes | Mapping) or not isinstance(tools, Sequence):
        raise InvalidGenerationConfigError(
            "tools must be a list of function schemas or callables.", field="tools"
        )
    definitions: list[ToolDefinition] = []
    functions: dict[str, Callable[..., Any]] = {}
    for tool in tools:
        if isinstance(tool, ToolDefinition):
            definitions.append(tool)
        elif isinstance(tool, Mapping):
            definitions.append(ToolDefinition.from_openai(tool))
        elif callable(tool):
            definition = _definition_of(tool)
            definitions.append(definition)
            functions[definition.name] = tool
        else:
            raise InvalidGenerationConfigError(
                f"A tool must be a function schema dict, a ToolDefinition or a callable, got "
                f"{type(tool).__name__}.",
                field="tools",
            )
    return ToolSet(tuple(definitions), functions)


def _definition_of(function: Callable[..., Any]) -> ToolDefinition:
    name = getattr(function, "__name__", type(function).__name__)
    try:
        schema = TypeAdapter(function).json_schema()  # type: ignore[arg-type]
    except Exception as exc:  # a parameter type pydantic cannot describe
        raise InvalidSchemaError(
            f"Tool {name!r}: no JSON schema for its parameters: {_first_line(exc)}",
            field="tools",
        ) from None
    schema = _without_titles(schema)
    doc = inspect.getdoc(function) or ""
    description = doc.split("\n\n", 1)[0].replace("\n", " ").strip()
    return ToolDefinition(name=name, description=description, parameters=schema)


def _without_titles(schema: Any) -> Any:
    """``schema`` without pydantic's titles (a parameter's name again, capitalised): tokens a
    model reads in every prompt, for nothing."""
    if isinstance(schema, dict):
        properties = schema.get("properties")
        return {
            key: (
                {name: _without_titles(value) for name, value in properties.items()}
                if key == "properties" and isinstance(properties, dict)
                else _without_titles(value)
            )
            for key, value in schema.items()
            if key != "title"
        }
    if isinstance(schema, list):
        return [_without_titles(item) for item in schema]
    return schema
