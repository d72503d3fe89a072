"""Constrained decoding on the embedded Gemma 3 270M (a base model that knows no schema and no
tool format): a schema-constrained answer validates, a forced tool call validates (streamed and
not), constrained and free requests share batches without changing the free rows' tokens, and
random JSON schemas (hypothesis) always give valid answers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from gemma_chat import (
    ChatSession,
    FinishReason,
    GemmaLLM,
    GenerationConfig,
    InferenceService,
    InvalidSchemaError,
    ResponseFormat,
    ToolDefinition,
    get_settings,
)

pytestmark = pytest.mark.slow

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "city": {"enum": ["Paris", "Rome", "Oslo"]},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
WEATHER = ToolDefinition(
    "get_weather",
    "The weather of a city.",
    {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 30},
            "days": {"type": "integer", "minimum": 1, "maximum": 14},
        },
        "required": ["city", "days"],
        "additionalProperties": False,
    },
)


class Person(BaseModel):
    name: str
    age: int


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def cache_dir(embedded_llm: GemmaLLM) -> Path:
    return Path(embedded_llm.settings.cache_dir)


@pytest_asyncio.fixture(loop_scope="function")
async def llm(cache_dir: Path) -> AsyncIterator[GemmaLLM]:
    """The embedded model on the native engine, Gemma's turn format (the base model then
    writes until the limit, so that requests really overlap)."""
    loaded = GemmaLLM(
        get_settings(
            cache_dir=str(cache_dir),
            model={"chat_format": "gemma"},
            performance={"engine": "native", "max_batch_size": 4},
        )
    )
    await loaded.load()
    yield loaded
    await loaded.unload()


@pytest.mark.asyncio
async def test_a_schema_constrained_answer_validates(embedded_llm: GemmaLLM) -> None:
    config = GenerationConfig(
        temperature=0, max_new_tokens=64, response_format=ResponseFormat.json_schema(PERSON)
    )
    completion = await embedded_llm.generate(chat("Describe a person as JSON."), config)
    assert completion.finish_reason is FinishReason.STOP
    jsonschema.validate(json.loads(completion.text), PERSON)


@pytest.mark.asyncio
async def test_the_library_returns_the_parsed_pydantic_object(embedded_llm: GemmaLLM) -> None:
    async with InferenceService(llm=embedded_llm) as service:
        response = await service.generate_response(
            ChatSession(),
            "Alice is 30. As JSON:",
            response_format=Person,
            max_new_tokens=64,
            temperature=0,
        )
    assert isinstance(response.parsed, Person)


@pytest.mark.parametrize("choice", ["required", "get_weather"])
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.asyncio
async def test_a_forced_tool_call_validates(
    embedded_llm: GemmaLLM, choice: str, stream: bool
) -> None:
    config = GenerationConfig(
        temperature=0.8, seed=7, max_new_tokens=120, tools=(WEATHER,), tool_choice=choice
    )
    messages = chat("Will it rain in Oslo this week?")
    if stream:
        chunks = [c async for c in embedded_llm.stream(messages, config)]
        text = "".join(c.text for c in chunks)
        final = chunks[-1]
        calls, finish = final.tool_calls, final.finish_reason
    else:
        completion = await embedded_llm.generate(messages, config)
        text, calls, finish = completion.text, completion.tool_calls, completion.finish_reason
    assert finish is FinishReason.TOOL_CALLS
    assert text == ""
    (call,) = calls
    assert call.name == "get_weather"
    jsonschema.validate(call.parsed_arguments(), dict(WEATHER.parameters))


@pytest.mark.asyncio
async def test_auto_tool_choice_allows_text_or_a_call(embedded_llm: GemmaLLM) -> None:
    config = GenerationConfig(temperature=0, max_new_tokens=24, tools=(WEATHER,))
    completion = await embedded_llm.generate(chat("Hello!"), config)
    if completion.tool_calls:
        assert completion.finish_reason is FinishReason.TOOL_CALLS
    else:
        assert completion.text
        assert not completion.text.startswith("`")


@pytest.mark.asyncio
async def test_choice_and_regex_formats(embedded_llm: GemmaLLM) -> None:
    choice = GenerationConfig(
        temperature=1.0, seed=3, response_format=ResponseFormat.choice(["red", "green", "blue"])
    )
    answer = await embedded_llm.generate(chat("A colour?"), choice)
    assert answer.text in ("red", "green", "blue")
    regex = GenerationConfig(
        temperature=0, max_new_tokens=20, response_format=ResponseFormat.regex(r"\d{3}-\d{4}")
    )
    answer = await embedded_llm.generate(chat("A phone number?"), regex)
    assert len(answer.text) == 8
    assert answer.text[3] == "-"


@pytest.mark.asyncio
async def test_an_invalid_schema_is_an_invalid_schema_error(embedded_llm: GemmaLLM) -> None:
    config = GenerationConfig(response_format=ResponseFormat.json_schema({"type": "nonsense"}))
    with pytest.raises(InvalidSchemaError, match="nonsense"):
        await embedded_llm.generate(chat("x"), config)


FREE = ["Write a story about a dragon.", "List some fruits."]
GREEDY = GenerationConfig(temperature=0, max_new_tokens=24)


@pytest.mark.asyncio
async def test_free_rows_answer_the_same_beside_constrained_rows(llm: GemmaLLM) -> None:
    alone = [(await llm.generate(chat(p), GREEDY)).text for p in FREE]
    constrained = GenerationConfig(
        temperature=0, max_new_tokens=48, response_format=ResponseFormat.json_schema(PERSON)
    )
    sampled = GenerationConfig(
        temperature=0.9,
        seed=1,
        max_new_tokens=48,
        response_format=ResponseFormat.json_schema(PERSON),
    )
    # The grammar compiled once first, so that the constrained requests join the batch at once.
    await llm.generate(chat("A person as JSON."), constrained)
    before = llm.get_model_info()["scheduler"]["max_batch"]
    results = await asyncio.gather(
        llm.generate(chat("A person as JSON."), constrained),
        *(llm.generate(chat(p), GREEDY) for p in FREE),
        llm.generate(chat("Another person as JSON."), sampled),
    )
    assert [r.text for r in results[1:3]] == alone
    for result in (results[0], results[3]):
        if result.finish_reason is FinishReason.STOP:
            jsonschema.validate(json.loads(result.text), PERSON)
        else:  # cut by max_new_tokens: still a prefix the grammar allowed
            assert result.text.startswith("{")
    info = llm.get_model_info()["scheduler"]
    assert max(before, info["max_batch"]) >= 3  # they did share batches
    assert info["constrained_tokens"] > 0


# -- random schemas ------------------------------------------------------------------------------

_NAMES = st.sampled_from(["a", "b", "id", "name", "x_1", "value"])
_LEAVES = st.one_of(
    st.just({"type": "string", "maxLength": 8}),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.integers(-50, 50).map(lambda lo: {"type": "integer", "minimum": lo, "maximum": lo + 9}),
    st.just({"type": "number"}),
    st.lists(st.sampled_from(["x", "yes", "no", "maybe"]), min_size=1, max_size=3, unique=True).map(
        lambda options: {"enum": options}
    ),
)


def _compound(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    objects = st.dictionaries(_NAMES, children, min_size=1, max_size=3).flatmap(
        lambda props: st.sets(st.sampled_from(sorted(props))).map(
            lambda required: {
                "type": "object",
                "properties": props,
                "required": sorted(required),
                "additionalProperties": False,
            }
        )
    )
    arrays = children.map(lambda item: {"type": "array", "items": item, "maxItems": 3})
    return st.one_of(objects, arrays)


SCHEMAS = st.recursive(_LEAVES, _compound, max_leaves=5)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(schema=SCHEMAS, seed=st.integers(0, 2**31))
def test_random_schemas_always_give_valid_answers(
    embedded_llm: GemmaLLM, schema: dict[str, Any], seed: int
) -> None:
    config = GenerationConfig(
        temperature=1.0,
        seed=seed,
        max_new_tokens=160,
        response_format=ResponseFormat.json_schema(schema),
    )
    completion = asyncio.run(embedded_llm.generate(chat("Some JSON, please."), config))
    if completion.finish_reason is FinishReason.LENGTH:  # a long sampled string: only a prefix
        return
    jsonschema.validate(json.loads(completion.text), schema)
