"""Constrained decoding on both generators (the native engine and transformers, as a logits
processor), on the tiny random Gemma 3: whatever a random model prefers, the grammar holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gemma_chat import FinishReason, GenerationConfig, ResponseFormat, ToolDefinition
from tests.integration.test_gemma_llm_on_a_tiny_model import HELLO, loaded


@pytest.fixture(params=["native", "transformers"])
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.asyncio
async def test_a_choice_holds_on_both_generators(
    tiny_model_dir: Path, engine: str, temperature: float
) -> None:
    llm = await loaded(tiny_model_dir, engine)
    config = GenerationConfig(
        temperature=temperature,
        seed=5,
        max_new_tokens=16,
        response_format=ResponseFormat.choice(["alpha", "beta"]),
    )
    completion = await llm.generate(HELLO, config)
    streamed = "".join([c.text async for c in llm.stream(HELLO, config)])
    await llm.unload()
    assert completion.text in ("alpha", "beta")
    assert streamed == completion.text
    assert completion.finish_reason is FinishReason.STOP


@pytest.mark.asyncio
async def test_a_forced_call_holds_on_both_generators(tiny_model_dir: Path, engine: str) -> None:
    llm = await loaded(tiny_model_dir, engine)
    tool = ToolDefinition(
        "pick",
        parameters={
            "type": "object",
            "properties": {"n": {"enum": [1, 2, 3]}},
            "required": ["n"],
            "additionalProperties": False,
        },
    )
    config = GenerationConfig(temperature=0.0, max_new_tokens=64, tools=(tool,), tool_choice="pick")
    completion = await llm.generate(HELLO, config)
    await llm.unload()
    assert completion.finish_reason is FinishReason.TOOL_CALLS
    (call,) = completion.tool_calls
    assert json.loads(call.arguments)["n"] in (1, 2, 3)
