"""A whole agent loop over HTTP on a scripted FakeLLM (the model calls the tool, the agent runs
it and sends the result, the model answers): pydantic-ai through the Responses API and LangChain
through Chat Completions, on a real uvicorn server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from gemma_chat import InferenceService, ToolCall, get_settings
from gemma_chat.server import create_app
from gemma_chat.testing import FakeLLM
from tests.e2e.servers import threaded_server


@pytest.fixture
def llm() -> FakeLLM:
    return FakeLLM(
        [ToolCall("get_weather", '{"city": "Paris"}'), "It is sunny in Paris."], model_name="m"
    )


@pytest.fixture
def base_url(llm: FakeLLM) -> Iterator[str]:
    settings = get_settings(storage={"url": "memory://"})
    with threaded_server(create_app(settings, InferenceService(settings, llm=llm))) as url:
        yield f"{url}/v1"


def test_a_pydantic_ai_agent_runs_the_tool_and_answers(base_url: str, llm: FakeLLM) -> None:
    pydantic_ai = pytest.importorskip("pydantic_ai")
    from openai import AsyncOpenAI
    from pydantic_ai.models.openai import OpenAIResponsesModel
    from pydantic_ai.providers.openai import OpenAIProvider

    seen: list[str] = []

    async def run() -> Any:
        async with AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0) as client:
            model = OpenAIResponsesModel("m", provider=OpenAIProvider(openai_client=client))
            agent = pydantic_ai.Agent(model)

            @agent.tool_plain
            def get_weather(city: str) -> str:
                """The weather in a city."""
                seen.append(city)
                return "sunny, 24 C"

            return await agent.run("What is the weather in Paris?")

    result = asyncio.run(run())
    assert seen == ["Paris"]
    assert result.output == "It is sunny in Paris."
    last = llm.messages_seen[-1]
    assert last[-1]["role"] == "tool"
    assert last[-1]["content"] == "sunny, 24 C"


def test_a_langchain_tool_loop_over_chat_completions(base_url: str, llm: FakeLLM) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    chat = langchain_openai.ChatOpenAI(base_url=base_url, api_key="unused", model="m")
    bound = chat.bind_tools([get_weather])
    messages: list[Any] = [HumanMessage("What is the weather in Paris?")]
    first = bound.invoke(messages)
    assert [call["name"] for call in first.tool_calls] == ["get_weather"]
    call = first.tool_calls[0]
    messages += [first, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])]
    answer = bound.invoke(messages)
    assert answer.content == "It is sunny in Paris."
    assert llm.messages_seen[-1][-1]["content"] == "sunny in Paris"
