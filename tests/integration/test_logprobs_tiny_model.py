"""Log probabilities on both generators (the native engine and transformers), on the tiny random
Gemma 3, and through the real ``openai`` client on the app in-process."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from gemma_chat import GenerationConfig, InferenceService
from gemma_chat.domain.models import TokenLogprob
from gemma_chat.server import create_app
from tests.integration.test_gemma_llm_on_a_tiny_model import HELLO, loaded


@pytest.fixture(params=["native", "transformers"])
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _same(streamed: list[TokenLogprob], whole: tuple[TokenLogprob, ...]) -> None:
    assert [e.token for e in streamed] == [e.token for e in whole]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in whole], abs=1e-3)
    for s, w in zip(streamed, whole, strict=True):
        assert [t for t, _ in s.top] == [t for t, _ in w.top]


@pytest.mark.asyncio
async def test_greedy_logprobs_on_both_generators(tiny_model_dir: Path, engine: str) -> None:
    llm = await loaded(tiny_model_dir, engine)
    config = GenerationConfig(temperature=0.0, max_new_tokens=12, logprobs=5)
    completion = await llm.generate(HELLO, config)
    streamed = [e async for chunk in llm.stream(HELLO, config) for e in chunk.logprobs]
    raw = await llm.complete("Once upon a time", config)
    await llm.unload()
    entries = completion.logprobs
    assert len(entries) == completion.token_usage.completion_tokens > 0
    for entry in (*entries, *raw.logprobs):
        assert entry.logprob <= 0.0
        assert len(entry.top) == 5
        # greedy: the chosen token is the most probable one
        assert entry.top[0] == (entry.token, pytest.approx(entry.logprob))
        assert [v for _, v in entry.top] == sorted((v for _, v in entry.top), reverse=True)
        assert sum(math.exp(v) for _, v in entry.top) <= 1.0 + 1e-5
    _same(streamed, entries)
    assert "".join(e.token for e in raw.logprobs) == raw.text  # raw: no format, no stop cut


@pytest.mark.asyncio
async def test_without_logprobs_there_are_none(tiny_model_dir: Path, engine: str) -> None:
    llm = await loaded(tiny_model_dir, engine)
    completion = await llm.generate(HELLO, GenerationConfig(temperature=0.0, max_new_tokens=4))
    await llm.unload()
    assert completion.logprobs == ()


@pytest.mark.asyncio
async def test_sampled_tokens_have_their_probability_in_the_model_s_row(
    tiny_model_dir: Path, engine: str
) -> None:
    llm = await loaded(tiny_model_dir, engine)
    config = GenerationConfig(temperature=1.0, seed=3, max_new_tokens=12, logprobs=0)
    completion = await llm.generate(HELLO, config)
    await llm.unload()
    assert completion.logprobs
    assert all(e.top == () for e in completion.logprobs)
    assert all(-100.0 < e.logprob <= 0.0 for e in completion.logprobs)


def test_logprobs_through_the_openai_client(tiny_model_dir: Path) -> None:
    import asyncio

    llm = asyncio.run(loaded(tiny_model_dir, "native"))
    asyncio.run(llm.unload())  # the service loads it again on its own event loop
    service = InferenceService(llm.settings, llm=llm)
    with TestClient(create_app(llm.settings, service)) as http:
        deadline = time.monotonic() + 60
        while http.get("/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        client = OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http)
        kwargs: dict[str, object] = {
            "model": llm.model_name,
            "messages": HELLO,
            "temperature": 0,
            "max_tokens": 8,
            "logprobs": True,
            "top_logprobs": 3,
        }
        answer = client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
        streamed = []
        for chunk in client.chat.completions.create(stream=True, **kwargs):  # type: ignore[call-overload]
            for choice in chunk.choices:
                if choice.logprobs is not None and choice.logprobs.content:
                    streamed += choice.logprobs.content
        legacy = client.completions.create(
            model=llm.model_name, prompt="Once upon a time", max_tokens=6, logprobs=2, temperature=0
        )
    content = answer.choices[0].logprobs.content
    assert content
    assert answer.usage is not None
    assert len(content) == answer.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0.0
        assert entry.bytes == list(entry.token.encode())
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].token == entry.token
    assert [e.token for e in streamed] == [e.token for e in content]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in content], abs=1e-3)
    logprobs = legacy.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.tokens
    assert logprobs.token_logprobs
    assert "".join(logprobs.tokens) == legacy.choices[0].text
    assert all(len(top) <= 2 for top in logprobs.top_logprobs or [])
