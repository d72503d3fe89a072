"""The parts of OpenAI's API that agent frameworks use, through the real ``openai`` client on a
FakeLLM: content parts, refused fields, n choices, model retrieval, the Responses API."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI
from pydantic import BaseModel

from gemma_chat import InferenceService, ToolCall, get_settings
from gemma_chat.server import create_app
from gemma_chat.testing import FakeLLM
from tests.tool_messages import WEATHER_TOOL, responses_tool, tool_loop_messages


@pytest.fixture
def llm() -> FakeLLM:
    return FakeLLM(["one two three", "four five six", "seven eight"], model_name="m")


@pytest.fixture
def http(llm: FakeLLM) -> Iterator[TestClient]:
    settings = get_settings(limits={"max_choices": 4})
    with TestClient(create_app(settings, InferenceService(settings, llm=llm))) as client:
        deadline = time.monotonic() + 5
        while client.get("/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        yield client


@pytest.fixture
def client(http: TestClient) -> OpenAI:
    # TestClient is an httpx.Client: the real client's requests go to the app in-process.
    return OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http)


USER = [{"role": "user", "content": "Hi"}]


def test_content_as_a_list_of_text_parts_is_read_as_the_text(client: OpenAI, llm: FakeLLM) -> None:
    parts: Any = [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": parts}])
    assert llm.messages_seen[-1][-1]["content"] == "Hello there"


def test_a_non_text_part_is_a_400_naming_it(client: OpenAI) -> None:
    parts: Any = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": parts}])
    error = raised.value.body
    assert isinstance(error, dict)
    assert error["param"] == "messages[0].content[1].type"
    assert "image_url" in error["message"]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"presence_penalty": -1.0}, "presence_penalty"),
        ({"logit_bias": {"42": 5}}, "logit_bias"),
        ({"store": True}, "store"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"audio": {"voice": "alloy"}}, "audio"),
        ({"n": 5}, "n"),
        ({"n": 0}, "n"),
    ],
)
def test_what_the_server_cannot_honour_is_a_400_naming_the_field(
    client: OpenAI, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="m", messages=USER, extra_body=extra)  # type: ignore[arg-type]
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["param"] == param


def test_neutral_values_and_identifiers_are_accepted(client: OpenAI) -> None:
    response = client.chat.completions.create(
        model="m",
        messages=USER,  # type: ignore[arg-type]
        frequency_penalty=0,
        presence_penalty=0,
        user="someone",
        metadata={"k": "v"},
        store=False,
    )
    assert response.choices[0].message.content


def test_an_unknown_field_in_a_message_is_a_400(http: TestClient) -> None:
    body = {"messages": [{"role": "user", "content": "Hi", "colour": "red"}]}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages[0].colour"


def test_a_union_field_of_the_wrong_type_names_the_field_only(http: TestClient) -> None:
    response = http.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": 5}]}
    )
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "messages[0].content"


def test_n_choices_come_back_each_with_its_index_and_the_usage_summed(
    client: OpenAI, llm: FakeLLM
) -> None:
    response = client.chat.completions.create(
        model="m", messages=USER, n=3, temperature=0.7  # type: ignore[arg-type]
    )
    assert [choice.index for choice in response.choices] == [0, 1, 2]
    assert len({choice.message.content for choice in response.choices}) == 3
    assert len(llm.calls) == 3
    assert response.usage is not None
    assert response.usage.completion_tokens == 3 + 3 + 2  # FakeLLM counts words


def test_seeded_choices_get_their_own_seeds(client: OpenAI, llm: FakeLLM) -> None:
    client.chat.completions.create(
        model="m", messages=USER, n=2, seed=7, temperature=0.7  # type: ignore[arg-type]
    )
    assert sorted(call.kwargs["seed"] for call in llm.calls) == [7, 8]


def test_n_streamed_choices_interleave_by_index_and_each_finishes(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model="m",
        messages=USER,  # type: ignore[arg-type]
        n=2,
        temperature=0.7,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts: dict[int, str] = {0: "", 1: ""}
    finished: set[int] = set()
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason is not None:
                finished.add(choice.index)
    assert finished == {0, 1}
    assert sorted(texts.values()) == ["four five six", "one two three"]
    assert usage is not None
    assert usage.completion_tokens == 6


def test_a_raw_completion_with_n_choices(client: OpenAI) -> None:
    completion = client.completions.create(
        model="m", prompt="Once", n=2, max_tokens=5, temperature=0.7
    )
    assert [choice.index for choice in completion.choices] == [0, 1]


def test_a_served_model_is_retrieved_and_another_is_a_404(client: OpenAI) -> None:
    assert client.models.retrieve("m").id == "m"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("not-served")


def test_the_responses_api_answers_a_string_input(client: OpenAI, llm: FakeLLM) -> None:
    response = client.responses.create(model="m", input="Hi", instructions="Be brief.")
    assert response.status == "completed"
    assert response.output_text == "one two three"
    assert response.usage is not None
    assert response.usage.output_tokens == 3
    assert llm.messages_seen[-1] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]


def test_the_responses_api_reads_message_items_and_says_when_cut_short(
    client: OpenAI, llm: FakeLLM
) -> None:
    response = client.responses.create(
        model="m",
        input=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        ],
        max_output_tokens=2,
    )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert llm.messages_seen[-1][0] == {"role": "system", "content": "Be brief."}


def test_the_responses_api_streams_openais_events(client: OpenAI) -> None:
    events = list(client.responses.create(model="m", input="Hi", stream=True))
    kinds = [event.type for event in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert "".join(deltas) == "one two three"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    final = events[-1]
    assert final.type == "response.completed"
    assert final.response.output_text == "one two three"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, None),
        ({"input": []}, "input"),
        ({"background": True}, "background"),
    ],
)
def test_the_responses_api_refuses_what_it_cannot_do_by_name(
    http: TestClient, extra: dict[str, Any], param: str | None
) -> None:
    response = http.post("/v1/responses", json={"model": "m", "input": "Hi", **extra})
    assert response.status_code == 400
    if param is not None:
        assert response.json()["error"]["param"] == param
    else:
        assert "input_image" in response.json()["error"]["message"]


# -- tools and structured output ------------------------------------------------------------


@pytest.fixture
def tool_llm() -> FakeLLM:
    return FakeLLM(
        [ToolCall("get_weather", '{"city": "Paris"}', id="call_1"), "It is sunny in Paris."],
        model_name="m",
    )


@pytest.fixture
def tool_client(tool_llm: FakeLLM) -> Iterator[OpenAI]:
    settings = get_settings()
    app = create_app(settings, InferenceService(settings, llm=tool_llm))
    with TestClient(app) as http:
        deadline = time.monotonic() + 5
        while http.get("/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        yield OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http)


def test_a_tool_call_comes_back_in_openais_shape(tool_client: OpenAI, tool_llm: FakeLLM) -> None:
    response = tool_client.chat.completions.create(
        model="m", messages=USER, tools=[WEATHER_TOOL], tool_choice="required"  # type: ignore[arg-type]
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    config = tool_llm.calls[-1].kwargs
    assert config["response_format"] is not None  # the call is forced by grammar


def test_a_streamed_tool_call_arrives_as_openais_deltas(tool_client: OpenAI) -> None:
    stream = tool_client.chat.completions.create(
        model="m", messages=USER, tools=[WEATHER_TOOL], stream=True  # type: ignore[arg-type]
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.id or ""
                if delta.function is not None:
                    call["name"] += delta.function.name or ""
                    call["arguments"] += delta.function.arguments or ""
    assert finish == "tool_calls"
    assert calls[0]["id"].startswith("call_")
    assert calls == {
        0: {"id": calls[0]["id"], "name": "get_weather", "arguments": '{"city": "Paris"}'}
    }


def test_a_turn_with_a_tool_result_continues(tool_client: OpenAI, tool_llm: FakeLLM) -> None:
    tool_client.chat.completions.create(model="m", messages=USER, tools=[WEATHER_TOOL])  # type: ignore[arg-type]
    messages = tool_loop_messages(USER)
    response = tool_client.chat.completions.create(
        model="m", messages=messages, tools=[WEATHER_TOOL]
    )
    assert response.choices[0].message.content == "It is sunny in Paris."
    seen = tool_llm.messages_seen[-1]
    assert seen[-1]["role"] == "tool"
    assert seen[-1].get("tool_call_id") == "call_1"
    assert seen[-2].get("tool_calls")


def test_a_tool_message_without_its_call_id_is_a_400(http: TestClient) -> None:
    body = {"messages": [*USER, {"role": "tool", "content": "x"}]}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages[1].tool_call_id"


class City(BaseModel):
    name: str
    population: int


def test_parse_with_a_pydantic_model_returns_a_validated_object(client: OpenAI) -> None:
    completion = client.chat.completions.parse(model="m", messages=USER, response_format=City)  # type: ignore[arg-type]
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, City)


def test_json_object_and_an_invalid_schema(client: OpenAI, llm: FakeLLM) -> None:
    client.chat.completions.create(
        model="m", messages=USER, response_format={"type": "json_object"}  # type: ignore[arg-type]
    )
    assert llm.calls[-1].kwargs["response_format"].is_json
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model="m",
            messages=USER,  # type: ignore[arg-type]
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x"},  # no schema
            },
        )
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["param"] == "response_format"


def test_the_responses_api_returns_a_function_call_item(tool_client: OpenAI) -> None:
    tool = responses_tool()
    response = tool_client.responses.create(
        model="m", input="Weather in Paris?", tools=[tool], tool_choice="required"
    )
    calls = [item for item in response.output if item.type == "function_call"]
    assert len(calls) == 1
    assert calls[0].name == "get_weather"
    assert calls[0].call_id.startswith("call_")
    assert json.loads(calls[0].arguments) == {"city": "Paris"}


def test_the_responses_api_continues_after_a_function_call_output(
    tool_client: OpenAI, tool_llm: FakeLLM
) -> None:
    tool = responses_tool()
    tool_client.responses.create(model="m", input="Weather?", tools=[tool])
    response = tool_client.responses.create(
        model="m",
        tools=[tool],
        input=[
            {"role": "user", "content": "Weather?"},
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": '{"city": "Paris"}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        ],
    )
    assert response.output_text == "It is sunny in Paris."
    assert tool_llm.messages_seen[-1][-1]["role"] == "tool"


def test_the_responses_api_streams_a_function_call(tool_client: OpenAI) -> None:
    tool = responses_tool()
    events = list(
        tool_client.responses.create(model="m", input="Weather?", tools=[tool], stream=True)
    )
    kinds = [event.type for event in events]
    assert "response.function_call_arguments.done" in kinds
    assert "response.output_text.delta" not in kinds
    final = events[-1]
    assert final.type == "response.completed"
    assert [item.type for item in final.response.output] == ["function_call"]


def test_the_responses_api_structured_output(client: OpenAI, llm: FakeLLM) -> None:
    response = client.responses.parse(model="m", input="A city?", text_format=City)
    assert isinstance(response.output_parsed, City)
    assert llm.calls[-1].kwargs["response_format"].schema is not None
