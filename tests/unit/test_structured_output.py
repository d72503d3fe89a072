"""Structured output and tools through InferenceService, on FakeLLM (no model)."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from gemma_chat import (
    ChatSession,
    FinishReason,
    InferenceService,
    InvalidGenerationConfigError,
    InvalidMessageError,
    InvalidSchemaError,
    ResponseFormat,
    StructuredOutputError,
    ToolCall,
    ToolDefinition,
    UnknownToolError,
)
from gemma_chat.domain.models import ResponseFormatKind, Role
from gemma_chat.infrastructure.repositories import InMemorySessionRepository
from gemma_chat.infrastructure.repositories.sqlite import SQLiteSessionRepository
from gemma_chat.testing import FakeLLM


class Person(BaseModel):
    name: str
    age: int


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather of a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


async def get_weather(city: str, unit: Literal["c", "f"] = "c") -> dict[str, Any]:
    """The weather of a city.

    Second paragraph, not in the description."""
    return {"city": city, "temperature": 21, "unit": unit}


@pytest.mark.asyncio
async def test_a_pydantic_response_format_gives_a_validated_parsed_object() -> None:
    llm = FakeLLM(['{"name": "Ada", "age": 36}'])
    async with InferenceService(llm=llm) as service:
        response = await service.generate_response(
            ChatSession(), "Who?", response_format=Person, temperature=0
        )
    assert response.parsed == Person(name="Ada", age=36)
    sent = llm.calls[0].kwargs["response_format"]
    assert sent.kind is ResponseFormatKind.JSON_SCHEMA
    assert sent.schema == Person.model_json_schema()
    assert sent.name == "Person"


@pytest.mark.asyncio
async def test_a_schema_dict_or_openai_response_format_parses_to_json() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    llm = FakeLLM(["not json"])  # the fake answers the schema's example instead
    async with InferenceService(llm=llm) as service:
        plain = await service.chat([{"role": "user", "content": "n?"}], response_format=schema)
        openai_shape = await service.chat(
            [{"role": "user", "content": "n?"}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "n", "schema": schema, "strict": True},
            },
        )
        anything = await service.chat(
            [{"role": "user", "content": "n?"}], response_format={"type": "json_object"}
        )
    assert plain.parsed == {"n": 0} == openai_shape.parsed
    assert anything.parsed == {}


@pytest.mark.asyncio
async def test_an_answer_that_does_not_validate_raises_and_records_nothing() -> None:
    llm = FakeLLM(['{"name": "Ada"}'])  # JSON, but without the required age
    session = ChatSession()
    async with InferenceService(llm=llm) as service:
        with pytest.raises(StructuredOutputError, match="json_schema") as caught:
            await service.generate_response(session, "Who?", response_format=Person)
    assert caught.value.text == '{"name": "Ada"}'
    assert session.message_count == 0


@pytest.mark.asyncio
async def test_a_regex_or_choice_answer_is_parsed_as_its_text() -> None:
    llm = FakeLLM(["yes"])
    async with InferenceService(llm=llm) as service:
        response = await service.chat(
            [{"role": "user", "content": "ok?"}], response_format=ResponseFormat.choice(["yes"])
        )
    assert response.parsed == "yes"


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (42, InvalidGenerationConfigError),
        ({"type": "json_schema", "json_schema": {"schema": 3}}, InvalidSchemaError),
        (asyncio.Event, InvalidSchemaError),  # a type pydantic has no schema for
    ],
)
@pytest.mark.asyncio
async def test_a_bad_response_format_is_a_specific_error(value: object, error: type) -> None:
    async with InferenceService(llm=FakeLLM()) as service:
        with pytest.raises(error):
            await service.chat([{"role": "user", "content": "x"}], response_format=value)


@pytest.mark.asyncio
async def test_tools_from_schemas_and_callables_reach_the_model_described() -> None:
    llm = FakeLLM(["plain answer"])
    async with InferenceService(llm=llm) as service:
        response = await service.chat(
            [{"role": "user", "content": "weather?"}], tools=[WEATHER, get_weather_in_f]
        )
    assert response.tool_calls == ()
    assert response.finish_reason is FinishReason.STOP
    prompt = llm.calls[0].prompt
    assert "```tool_call" in prompt
    assert "get_weather" in prompt
    assert "get_weather_in_f" in prompt
    # auto: a grammar allowing text or a call
    assert llm.calls[0].kwargs["response_format"].kind is ResponseFormatKind.GRAMMAR


async def get_weather_in_f(city: str) -> str:
    """Fahrenheit."""
    return "70"


def test_a_callable_tool_gets_its_schema_from_its_signature() -> None:
    from gemma_chat.application.inference.structured import tools_of

    (definition,) = tools_of([get_weather]).definitions
    assert definition.name == "get_weather"
    assert definition.description == "The weather of a city."
    assert definition.parameters["required"] == ["city"]
    assert definition.parameters["properties"]["unit"]["enum"] == ["c", "f"]


@pytest.mark.asyncio
async def test_a_model_call_comes_back_as_tool_calls_not_text() -> None:
    call = ToolCall("get_weather", json.dumps({"city": "Paris"}))
    llm = FakeLLM([call])
    session = ChatSession()
    async with InferenceService(llm=llm) as service:
        response = await service.generate_response(
            session, "Weather in Paris?", tools=[WEATHER], tool_choice="required"
        )
    assert response.finish_reason is FinishReason.TOOL_CALLS
    assert response.content == ""
    (made,) = response.tool_calls
    assert (made.name, made.parsed_arguments()) == ("get_weather", {"city": "Paris"})
    assert session.messages[-1].tool_calls == (made,)


@pytest.mark.asyncio
async def test_a_streamed_call_is_held_back_and_arrives_on_the_last_chunk() -> None:
    llm = FakeLLM(["Let me look. " + _block("get_weather", {"city": "Oslo"})])
    async with InferenceService(llm=llm) as service:
        chunks = [
            c
            async for c in service.stream_chat(
                [{"role": "user", "content": "Oslo?"}], tools=[WEATHER]
            )
        ]
    text = "".join(c.text for c in chunks)
    assert "tool_call" not in text
    assert text.strip() == "Let me look."
    assert chunks[-1].finish_reason is FinishReason.TOOL_CALLS
    assert [c.name for c in chunks[-1].tool_calls] == ["get_weather"]


def _block(name: str, arguments: dict[str, Any]) -> str:
    return "```tool_call\n" + json.dumps({"name": name, "arguments": arguments}) + "\n```"


@pytest.mark.parametrize(
    ("choice", "error"),
    [("nope", UnknownToolError), ({"type": "function", "function": {}}, ValueError)],
)
@pytest.mark.asyncio
async def test_an_unknown_tool_choice_is_a_specific_error(choice: object, error: type) -> None:
    async with InferenceService(llm=FakeLLM()) as service:
        with pytest.raises(error):
            await service.chat(
                [{"role": "user", "content": "x"}], tools=[WEATHER], tool_choice=choice
            )


@pytest.mark.asyncio
async def test_required_without_tools_and_duplicate_tools_are_rejected() -> None:
    async with InferenceService(llm=FakeLLM()) as service:
        with pytest.raises(InvalidGenerationConfigError, match="needs tools"):
            await service.chat([{"role": "user", "content": "x"}], tool_choice="required")
        with pytest.raises(InvalidGenerationConfigError, match="unique"):
            await service.chat([{"role": "user", "content": "x"}], tools=[WEATHER, WEATHER])
        with pytest.raises(InvalidGenerationConfigError, match="parameters"):
            ToolDefinition("f", parameters={"type": "array"})


@pytest.mark.asyncio
async def test_a_stateless_chat_takes_openai_tool_call_and_tool_result_messages() -> None:
    llm = FakeLLM(["It is 21 degrees in Paris."])
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'},
    ]
    async with InferenceService(llm=llm) as service:
        response = await service.chat(messages, tools=[WEATHER])
    assert response.content == "It is 21 degrees in Paris."
    prompt = llm.calls[0].prompt
    assert '"name": "get_weather", "arguments": {"city": "Paris"}' in prompt
    assert "```tool_result" in prompt
    assert '"id": "call_1"' in prompt


@pytest.mark.parametrize(
    "bad",
    [
        {"role": "tool", "content": "x"},  # no tool_call_id
        {"role": "user", "content": "x", "tool_calls": [{"id": "c"}]},
    ],
)
@pytest.mark.asyncio
async def test_malformed_tool_messages_are_rejected(bad: dict[str, Any]) -> None:
    async with InferenceService(llm=FakeLLM()) as service:
        with pytest.raises(InvalidMessageError):
            await service.chat([{"role": "user", "content": "hi"}, bad])


@pytest.mark.asyncio
async def test_run_tools_runs_the_call_and_continues_the_turn_recording_every_step() -> None:
    llm = FakeLLM([ToolCall("get_weather", '{"city": "Paris"}'), "21 degrees in Paris."])
    session = ChatSession()
    async with InferenceService(llm=llm) as service:
        response = await service.run_tools(session, "Weather in Paris?", tools=[get_weather])
    assert response.content == "21 degrees in Paris."
    assert response.finish_reason is FinishReason.STOP
    roles = [m.role for m in session.messages]
    assert roles == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.ASSISTANT]
    result = session.messages[2]
    assert result.tool_call_id == session.messages[1].tool_calls[0].id
    assert json.loads(result.content) == {"city": "Paris", "temperature": 21, "unit": "c"}
    assert response.token_usage.completion_tokens > (
        session.messages[1].token_count or 0
    )  # both answers
    assert len(llm.calls) == 2
    assert "```tool_result" in llm.calls[1].prompt


@pytest.mark.asyncio
async def test_a_failing_slow_or_unknown_tool_becomes_its_result() -> None:
    async def broken(x: int) -> int:
        raise RuntimeError("database down")

    async def slow(x: int) -> int:
        await asyncio.sleep(5)
        return x

    llm = FakeLLM(
        [
            [
                ToolCall("broken", '{"x": 1}'),
                ToolCall("slow", '{"x": 1}'),
                ToolCall("broken", '{"x": "not a number"}'),
            ],
            "done",
        ]
    )
    session = ChatSession()
    async with InferenceService(llm=llm) as service:
        await service.run_tools(session, "go", tools=[broken, slow], tool_timeout=0.05)
    results = [m.content for m in session.messages if m.role is Role.TOOL]
    assert results[0] == "Error: RuntimeError: database down"
    assert "did not answer within 0.05 s" in results[1]
    assert results[2].startswith("Error: invalid arguments for 'broken'")


@pytest.mark.asyncio
async def test_run_tools_stops_after_max_steps_without_calling_on_the_last() -> None:
    call = ToolCall("get_weather", '{"city": "Rome"}')
    llm = FakeLLM([call, call, "gave up"])
    async with InferenceService(llm=llm) as service:
        response = await service.run_tools(ChatSession(), "loop", tools=[get_weather], max_steps=2)
    assert len(llm.calls) == 2
    # The last answer may not call: tools described no more, grammar none.
    assert llm.calls[1].kwargs.get("response_format") is None
    assert response.finish_reason in (FinishReason.STOP, FinishReason.TOOL_CALLS)
    with pytest.raises(InvalidGenerationConfigError, match="max_steps"):
        async with InferenceService(llm=FakeLLM()) as service:
            await service.run_tools(ChatSession(), "x", tools=[get_weather], max_steps=0)


@pytest.mark.parametrize("store", ["memory", "sqlite"])
@pytest.mark.asyncio
async def test_tool_calls_and_results_round_trip_through_the_stores(
    store: str, tmp_path: Any
) -> None:
    repository: Any = (
        InMemorySessionRepository()
        if store == "memory"
        else SQLiteSessionRepository(tmp_path / "s.db")
    )
    llm = FakeLLM([ToolCall("get_weather", '{"city": "Paris"}'), "21 degrees."])
    async with InferenceService(llm=llm, sessions=repository) as service:
        session = await service.create_session()
        await service.run_tools(session.id, "Weather?", tools=[get_weather])
        stored = await service.get_session(session.id)
    again = stored
    if store == "sqlite":
        again = await SQLiteSessionRepository(tmp_path / "s.db").get(session.id)
    assert [m.role for m in stored.messages] == [
        Role.USER,
        Role.ASSISTANT,
        Role.TOOL,
        Role.ASSISTANT,
    ]
    assert [m.to_dict() for m in again.messages] == [m.to_dict() for m in stored.messages]
    assert stored.messages[1].tool_calls[0].name == "get_weather"
    assert stored.to_chat_messages()[2]["tool_call_id"] == stored.messages[1].tool_calls[0].id
