"""``/v1/responses`` (OpenAI's Responses API): the request, the response object and the stream's
events, in the shapes OpenAI's clients parse. The request's ``input`` items are read by the route
(``routers.responses``), which names the item a 400 is about."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gemma_chat.server.protocol.common import GenerationRequest

__all__ = [
    "FunctionCallItem",
    "IncompleteDetails",
    "OutputMessage",
    "OutputText",
    "ResponseObject",
    "ResponsesFunctionTool",
    "ResponsesNamedToolChoice",
    "ResponsesRequest",
    "ResponsesTextConfig",
    "ResponsesTextFormat",
    "ResponsesUsage",
    "StreamEvent",
]


class ResponsesFunctionTool(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["function"]
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ResponsesNamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["function"]
    name: str


class ResponsesTextFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponsesTextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    format: ResponsesTextFormat | None = None
    verbosity: Literal["medium"] | None = None  # the only one a model without the knob has


class ResponsesRequest(GenerationRequest):
    # A string (one user message) or a list of items: messages ({"role", "content"}, "type"
    # optional), "function_call" and "function_call_output" items.
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = None
    tools: list[ResponsesFunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ResponsesNamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    text: ResponsesTextConfig | None = None
    previous_response_id: str | None = None
    reasoning: dict[str, Any] | None = None
    truncation: Literal["disabled"] | None = None
    include: list[str] | None = None
    top_logprobs: int | None = None
    max_tool_calls: int | None = None

    def structured_parameters(self) -> dict[str, Any]:
        """``tools``, ``tool_choice`` and ``text.format`` as the service takes them (the
        library reads Chat Completions' dict shapes)."""
        tools = [
            {
                "type": "function",
                "function": tool.model_dump(exclude={"type"}, exclude_none=True),
            }
            for tool in self.tools or []
        ]
        choice = self.tool_choice
        fmt = self.text.format if self.text is not None else None
        response_format: dict[str, Any] | None = None
        if fmt is not None and fmt.type == "json_object":
            response_format = {"type": "json_object"}
        elif fmt is not None and fmt.type == "json_schema":
            spec = fmt.model_dump(by_alias=True, exclude={"type"}, exclude_none=True)
            spec.setdefault("name", "response")
            response_format = {"type": "json_schema", "json_schema": spec}
        return {
            "tools": tools or None,
            "tool_choice": choice.name if isinstance(choice, BaseModel) else choice,
            "response_format": response_format,
        }

    def unsupported_value(self) -> tuple[str, str] | None:
        if self.previous_response_id is not None:
            return (
                "previous_response_id",
                "previous_response_id is not supported: nothing is stored; send the whole "
                "conversation as input.",
            )
        if self.reasoning:
            return "reasoning", "reasoning is not supported: this model does not reason apart."
        if self.include:
            return "include", f"include {self.include!r} is not supported."
        if self.top_logprobs:
            return "top_logprobs", "top_logprobs is not supported on /v1/responses."
        return super().unsupported_value()

    def _max_new_tokens(self) -> int | None:
        return self.max_output_tokens


# -- the response ---------------------------------------------------------------------------


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class FunctionCallItem(BaseModel):
    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"]


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponsesUsage(BaseModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class ResponseObject(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "cancelled", "failed"]
    incomplete_details: IncompleteDetails | None = None
    error: None = None
    model: str
    instructions: str | None = None
    output: list[OutputMessage | FunctionCallItem]
    parallel_tool_calls: bool = True
    tool_choice: Literal["none", "auto", "required"] | ResponsesNamedToolChoice = "auto"
    tools: list[ResponsesFunctionTool] = Field(default_factory=list)
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    text: ResponsesTextConfig | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    previous_response_id: None = None
    store: bool = False
    truncation: Literal["disabled"] = "disabled"
    usage: ResponsesUsage | None = None

    @property
    def output_text(self) -> str:
        return "".join(
            part.text
            for item in self.output
            if isinstance(item, OutputMessage)
            for part in item.content
        )


class StreamEvent(BaseModel):
    """One server-sent event of a streamed response; its other fields depend on ``type``
    (``response.output_text.delta`` has ``item_id``, ``output_index``, ``content_index``,
    ``delta``...), as OpenAI's stream reference lists them."""

    model_config = ConfigDict(extra="allow")

    type: str
    sequence_number: int
