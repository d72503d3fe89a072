"""Tools and structured output in Chat Completions' shapes: function definitions, tool choice,
``response_format``, and the calls an answer carries (whole, and as stream deltas)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gemma_chat.server.protocol.common import absent

__all__ = [
    "FunctionCallDelta",
    "FunctionCallOut",
    "FunctionDefinition",
    "JSONSchemaFormat",
    "NamedFunction",
    "NamedToolChoice",
    "ResponseFormat",
    "ToolCallDelta",
    "ToolCallOut",
    "ToolChoice",
    "ToolDefinition",
]


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema of the arguments object
    strict: bool | None = None


class ToolDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str
    description: str | None = None
    # "schema" shadows a BaseModel attribute, hence the alias.
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class FunctionCallOut(BaseModel):
    name: str
    arguments: str  # JSON text


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class FunctionCallDelta(BaseModel):
    name: str | None = Field(default=None, exclude_if=absent)
    arguments: str | None = Field(default=None, exclude_if=absent)


class ToolCallDelta(BaseModel):
    """A streamed tool call: the first delta of a call has its id, type and name, the next ones
    pieces of its arguments (OpenAI's way)."""

    index: int
    id: str | None = Field(default=None, exclude_if=absent)
    type: Literal["function"] | None = Field(default=None, exclude_if=absent)
    function: FunctionCallDelta
