"""VLLMLLM on a real vLLM engine: runs only on a CUDA machine with ``pip install '.[vllm]'``.

The model is the tiny random Gemma 3 the tests build (no download), so answers are random
text: the tests compare outputs with each other, never with expected words.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

import pytest
import pytest_asyncio

from gemma_chat import ChatSession, FinishReason, GenerationConfig, InferenceService, get_settings
from gemma_chat.infrastructure.llm.adapters.vllm import VLLMLLM, cuda_available


def _vllm_runs_here() -> bool:
    return importlib.util.find_spec("vllm") is not None and cuda_available()


pytestmark = pytest.mark.skipif(
    not _vllm_runs_here(), reason="needs vLLM (pip install '.[vllm]') and a CUDA GPU"
)

HI = [{"role": "user", "content": "Hello there"}]
GREEDY = GenerationConfig(temperature=0.0, max_new_tokens=16)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def llm(tiny_model_dir: Path) -> AsyncIterator[VLLMLLM]:
    settings = get_settings(
        model={"name": f"vllm:{tiny_model_dir}", "context_length": 512},
        vllm={"gpu_memory_utilization": 0.2},
    )
    adapter = VLLMLLM(settings)
    await adapter.load()
    yield adapter
    await adapter.unload()


@pytest.mark.asyncio(loop_scope="module")
async def test_vllm_answers_and_counts_its_tokens(llm: VLLMLLM) -> None:
    completion = await llm.generate(HI, GREEDY)
    assert completion.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
    assert 0 < completion.token_usage.completion_tokens <= 16
    assert completion.token_usage.prompt_tokens == llm.count_tokens(llm.format_prompt(HI))
    assert llm.context_length == 512


@pytest.mark.asyncio(loop_scope="module")
async def test_a_greedy_stream_is_the_same_text_as_the_whole_answer(llm: VLLMLLM) -> None:
    whole = await llm.generate(HI, GREEDY)
    pieces = [chunk async for chunk in llm.stream(HI, GREEDY)]
    assert "".join(p.text for p in pieces) == whole.text
    assert pieces[-1].token_usage == whole.token_usage


@pytest.mark.asyncio(loop_scope="module")
async def test_a_stream_stopped_early_leaves_the_engine_serving(llm: VLLMLLM) -> None:
    config = GenerationConfig(temperature=0.9, max_new_tokens=400)
    async with aclosing(llm.stream(HI, config)) as stream:
        async for _ in stream:
            break
    assert (await llm.generate(HI, GREEDY)).text is not None
    await llm.check_health()


@pytest.mark.asyncio(loop_scope="module")
async def test_the_service_runs_turns_on_vllm(llm: VLLMLLM) -> None:
    session = ChatSession(system_prompt="Be brief.")
    async with InferenceService(llm=llm) as service:
        first = await service.generate_response(session, "Hi", temperature=0)
        chunks = [c async for c in service.stream_response(session, "More?", temperature=0)]
    assert [m.content for m in session.messages] == [
        "Hi",
        first.content,
        "More?",
        "".join(c.text for c in chunks),
    ]
