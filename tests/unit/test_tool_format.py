"""The domain's structured-output values, and the tool prompt format for models without tool
tokens: rendering, parsing, the stream filter, the grammar."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gemma_chat import (
    InvalidGenerationConfigError,
    InvalidMessageError,
    InvalidSchemaError,
    ResponseFormat,
    ToolCall,
    ToolChoice,
    ToolDefinition,
)
from gemma_chat.domain.models import (
    ChatMessage,
    ChatSession,
    GenerationConfig,
    Message,
    ResponseFormatKind,
    Role,
    TokenUsage,
    ToolChoiceMode,
)
from gemma_chat.infrastructure.llm.generation.tool_prompt import (
    ToolCallFilter,
    call_block,
    parse_tool_calls,
    render_tool_conversation,
    tool_grammar,
)

WEATHER = ToolDefinition(
    "get_weather",
    "The weather.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: ResponseFormat(ResponseFormatKind.JSON_SCHEMA), "needs its schema"),
        (lambda: ResponseFormat.json_schema({"a": object()}), "not JSON"),
        (lambda: ResponseFormat.regex(""), "non-empty"),
        (lambda: ResponseFormat.choice([]), "non-empty strings"),
        (lambda: ResponseFormat("yaml"), "Unknown response format"),  # type: ignore[arg-type]
        (lambda: ResponseFormat.json_schema({}, name="has space"), "name"),
        (lambda: ToolDefinition("bad name"), "Tool name"),
        (lambda: ToolChoice.parse(3), "tool_choice"),
        (lambda: ToolDefinition.from_openai({"type": "retrieval", "function": {}}), "function"),
    ],
)
def test_bad_structured_values_are_rejected_naming_what(make: Any, match: str) -> None:
    with pytest.raises(InvalidGenerationConfigError, match=match):
        make()


def test_tool_choice_parses_openai_shapes() -> None:
    assert ToolChoice.parse("required").mode is ToolChoiceMode.REQUIRED
    named = ToolChoice.parse({"type": "function", "function": {"name": "f"}})
    assert (named.mode, named.name) == (ToolChoiceMode.NAMED, "f")
    assert ToolChoice.parse("f") == named
    assert named.to_openai() == {"type": "function", "function": {"name": "f"}}


def test_a_config_with_tools_is_json_ready_and_keyed_by_them() -> None:
    plain = GenerationConfig()
    with_tools = GenerationConfig(tools=(WEATHER,), tool_choice="auto")
    assert "tools" not in plain.to_dict()
    data = with_tools.to_dict()
    assert data["tools"][0]["function"]["name"] == "get_weather"
    assert data["tool_choice"] == "auto"
    json.dumps(data)
    assert with_tools.tool_mode is ToolChoiceMode.AUTO
    assert plain.tool_mode is ToolChoiceMode.NONE


def test_tool_messages_are_checked() -> None:
    call = ToolCall("f", "{}")
    with pytest.raises(InvalidMessageError, match="Only an assistant"):
        Message(Role.USER, "x", tool_calls=(call,))
    with pytest.raises(InvalidMessageError, match="tool_call_id"):
        Message(Role.TOOL, "result")
    with pytest.raises(InvalidMessageError, match="tool_call_id"):
        Message(Role.USER, "x", tool_call_id="c1")
    with pytest.raises(InvalidMessageError, match="not JSON"):
        ToolCall("f", "{").parsed_arguments()


def test_a_turn_with_tool_steps_round_trips_through_the_stored_form() -> None:
    session = ChatSession()
    call = ToolCall("f", '{"x": 1}', id="c1")
    session.record_turn(
        "go",
        "done",
        TokenUsage(3, 4),
        steps=[
            Message(Role.ASSISTANT, "", tool_calls=(call,)),
            Message(Role.TOOL, "42", tool_call_id="c1"),
        ],
    )
    restored = ChatSession.from_dict(json.loads(json.dumps(session.to_dict())))
    assert restored == session
    assert restored.messages[1].tool_calls == (call,)
    chat = restored.to_chat_messages()
    assert chat[1]["tool_calls"] == [call.to_openai()]
    assert chat[2] == {"role": "tool", "content": "42", "tool_call_id": "c1"}


def test_a_session_from_a_newer_schema_is_refused() -> None:
    data = ChatSession().to_dict() | {"schema_version": 99}
    with pytest.raises(InvalidMessageError, match="newer"):
        ChatSession.from_dict(data)


def test_the_conversation_is_rendered_with_tools_described_and_calls_as_blocks() -> None:
    call = ToolCall("get_weather", '{"city": "Oslo"}', id="c1")
    messages: list[ChatMessage] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [call.to_openai()]},
        {"role": "tool", "content": "rain", "tool_call_id": "c1"},
    ]
    rendered = render_tool_conversation(messages, [WEATHER], ToolChoiceMode.REQUIRED)
    assert [m["role"] for m in rendered] == ["system", "user", "assistant", "user"]
    assert rendered[0]["content"].startswith("Be brief.\n\n")
    assert "get_weather: The weather." in rendered[0]["content"]
    assert rendered[2]["content"] == call_block(call)
    assert json.loads(rendered[3]["content"].split("\n")[1]) == {"id": "c1", "content": "rain"}
    none = render_tool_conversation(messages[:2], [WEATHER], ToolChoiceMode.NONE)
    assert none == messages[:2]


def test_calls_are_parsed_and_unknown_or_broken_blocks_stay_text() -> None:
    good = call_block(ToolCall("get_weather", '{"city": "Rome"}'))
    unknown = call_block(ToolCall("launch", "{}"))
    text, calls = parse_tool_calls(f"Sure.\n{good}", [WEATHER])
    assert text == "Sure."
    assert [(c.name, c.parsed_arguments()) for c in calls] == [("get_weather", {"city": "Rome"})]
    assert parse_tool_calls(unknown, [WEATHER]) == (unknown, ())
    broken = "```tool_call\n{not json\n```"
    assert parse_tool_calls(broken, [WEATHER]) == (broken, ())


@pytest.mark.parametrize("cut", [1, 3, 7, 12, 20])
def test_the_stream_filter_never_lets_a_block_through(cut: int) -> None:
    answer = "Checking. " + call_block(ToolCall("get_weather", '{"city": "Rome"}'))
    pieces = [answer[i : i + cut] for i in range(0, len(answer), cut)]
    filter_ = ToolCallFilter([WEATHER])
    shown = "".join(filter_.push(p) for p in pieces)
    rest, calls = filter_.finish()
    assert shown + rest == "Checking. "
    assert [c.name for c in calls] == ["get_weather"]


def test_the_stream_filter_releases_text_that_only_looked_like_a_fence() -> None:
    filter_ = ToolCallFilter([WEATHER])
    shown = filter_.push("a ``") + filter_.push("` code")
    rest, calls = filter_.finish()
    assert shown + rest == "a ``` code"
    assert calls == ()


def test_the_tool_grammar_is_a_grammar_only_when_tools_may_be_called() -> None:
    fmt = ResponseFormat.json_object()
    assert tool_grammar([WEATHER], ToolChoiceMode.NONE, None, fmt) is fmt
    forced = tool_grammar([WEATHER], ToolChoiceMode.NAMED, "get_weather")
    assert forced is not None
    assert forced.kind is ResponseFormatKind.GRAMMAR
    assert "tool_call" in str(forced.grammar)
    auto = tool_grammar([WEATHER], ToolChoiceMode.AUTO, None, fmt)
    assert auto is not None
    assert auto.kind is ResponseFormatKind.GRAMMAR


def test_a_tool_schema_that_does_not_compile_is_an_invalid_schema_error() -> None:
    bad = ToolDefinition("f", parameters={"type": "object", "properties": {"x": {"type": "?"}}})
    with pytest.raises(InvalidSchemaError, match="tools"):
        tool_grammar([bad], ToolChoiceMode.REQUIRED)
