"""Agent frameworks against the server on the embedded Gemma 3 270M: the official openai
client's structured output and tool calls, LangChain's ``bind_tools`` and
``with_structured_output``, and a pydantic-ai agent (which uses the Responses API)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import platformdirs
import pytest
from openai import BadRequestError, OpenAI
from pydantic import BaseModel

from gemma_chat import EMBEDDED_MODEL_NAME, get_settings
from gemma_chat.server import create_app
from tests.e2e.servers import threaded_server
from tests.tool_messages import WEATHER_TOOL, tool_loop_messages

pytestmark = pytest.mark.slow

MODEL = EMBEDDED_MODEL_NAME

QUESTION: Any = [{"role": "user", "content": "What is the weather in Paris?"}]


class City(BaseModel):
    name: str
    country: str


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    # The user cache dir, not the test's own: the model's conversion is shared between runs.
    settings = get_settings(
        model={"name": MODEL, "max_new_tokens": 64},
        cache_dir=platformdirs.user_cache_dir("gemma-chat"),
        storage={"url": "memory://"},
    )
    with threaded_server(create_app(settings), timeout=300) as url:
        yield f"{url}/v1"


@pytest.fixture
def client(base_url: str) -> Iterator[OpenAI]:
    with OpenAI(base_url=base_url, api_key="unused", max_retries=0) as openai_client:
        yield openai_client


def test_parse_returns_a_validated_object(client: OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Name a city in France."}],
        response_format=City,
        temperature=0,
    )
    assert isinstance(completion.choices[0].message.parsed, City)


def arguments_of(arguments: str) -> dict[str, Any]:
    value = json.loads(arguments)
    assert isinstance(value, dict)
    assert set(value) == {"city"}
    assert isinstance(value["city"], str)
    return value


def test_a_forced_tool_call_validates_against_its_schema(client: OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=[WEATHER_TOOL], tool_choice="required", temperature=0
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.function.name == "get_weather"
    arguments_of(call.function.arguments)


def test_a_forced_tool_call_streams_as_openai_streams_it(client: OpenAI) -> None:
    named: Any = {"type": "function", "function": {"name": "get_weather"}}
    stream = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=[WEATHER_TOOL], tool_choice=named, stream=True
    )
    name, arguments, finish = "", "", None
    for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            assert not choice.delta.content  # a call is never streamed as text
            for delta in choice.delta.tool_calls or []:
                assert delta.index == 0
                if delta.function is not None:
                    name += delta.function.name or ""
                    arguments += delta.function.arguments or ""
    assert finish == "tool_calls"
    assert name == "get_weather"
    arguments_of(arguments)


def test_a_turn_with_a_tool_result_continues_in_text(client: OpenAI) -> None:
    messages = tool_loop_messages(QUESTION)
    completion = client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER_TOOL], tool_choice="none", temperature=0
    )
    choice = completion.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert choice.message.content


def test_an_invalid_schema_is_a_400_with_the_librarys_message(client: OpenAI) -> None:
    with pytest.raises(BadRequestError) as raised:
        client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "bad", "schema": {"type": "no-such-type"}},
            },
        )
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["param"] == "response_format"


def test_unsupported_fields_are_a_400_naming_them(client: OpenAI) -> None:
    with pytest.raises(BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=QUESTION, frequency_penalty=1.0)
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["param"] == "frequency_penalty"


def test_langchain_bind_tools_and_with_structured_output(base_url: str) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    llm = langchain_openai.ChatOpenAI(
        base_url=base_url, api_key="unused", model=MODEL, temperature=0, max_retries=0
    )
    message = llm.bind_tools([get_weather], tool_choice="get_weather").invoke(
        "What is the weather in Paris?"
    )
    assert [call["name"] for call in message.tool_calls] == ["get_weather"]
    assert isinstance(message.tool_calls[0]["args"]["city"], str)
    for method in ("function_calling", "json_schema"):
        city = llm.with_structured_output(City, method=method).invoke("Name a city in France.")
        assert isinstance(city, City), method


def test_a_pydantic_ai_agent_with_a_tool_completes_a_run(
    base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pydantic_ai = pytest.importorskip("pydantic_ai")
    from openai import AsyncOpenAI
    from pydantic_ai.models import infer_model
    from pydantic_ai.models.openai import OpenAIResponsesModel
    from pydantic_ai.providers.openai import OpenAIProvider
    from pydantic_ai.settings import ModelSettings

    # What pydantic-ai builds for Agent("openai:<model>"): the Responses API.
    monkeypatch.setenv("OPENAI_API_KEY", "unused")
    assert isinstance(infer_model(f"openai:{MODEL}"), OpenAIResponsesModel)

    async def run() -> Any:
        # Our own client, closed at the end (the default one outlives asyncio.run's loop).
        async with AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0) as client:
            model = OpenAIResponsesModel(MODEL, provider=OpenAIProvider(openai_client=client))
            agent = pydantic_ai.Agent(
                model, model_settings=ModelSettings(temperature=0, max_tokens=48)
            )

            @agent.tool_plain
            def get_weather(city: str) -> str:
                """The weather in a city."""
                return "sunny, 24 C"

            return await agent.run("What is the weather in Paris?")

    result = asyncio.run(run())
    assert isinstance(result.output, str)
    assert result.output
