"""Log probabilities: the config field, the job's attachment of entries to the chunks that carry
their text, and OpenAI's shapes over HTTP (through the real ``openai`` client, on a FakeLLM that
scripts them)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import torch
from fastapi.testclient import TestClient
from openai import OpenAI

from gemma_chat import InferenceService, get_settings
from gemma_chat.domain.errors import InvalidGenerationConfigError
from gemma_chat.domain.models import (
    FinishReason,
    GenerationConfig,
    StreamChunk,
    TokenLogprob,
)
from gemma_chat.infrastructure.llm.generation.job import GenerationJob
from gemma_chat.infrastructure.llm.generation.sampling import SamplingParams
from gemma_chat.server import create_app
from gemma_chat.testing import FakeLLM

# -- the config -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [-1, 21, True, 1.5, "3"])
def test_logprobs_out_of_range_or_not_an_integer_is_refused_by_name(value: Any) -> None:
    with pytest.raises(InvalidGenerationConfigError) as raised:
        GenerationConfig(logprobs=value)
    assert raised.value.field == "logprobs"


def test_logprobs_is_part_of_the_cache_key_only_when_asked_for() -> None:
    assert "logprobs" not in GenerationConfig().to_dict()
    assert GenerationConfig(logprobs=0).to_dict()["logprobs"] == 0
    assert GenerationConfig(logprobs=20).to_dict() != GenerationConfig(logprobs=3).to_dict()


# -- the job --------------------------------------------------------------------------------

_WORDS = {1: "Hel", 2: "lo", 3: " wor", 4: "ld", 5: "!", 9: "<end>"}


def _job(chunks: list[StreamChunk | BaseException], **kwargs: Any) -> GenerationJob:
    return GenerationJob(
        prompt_ids=[7, 7],
        sampling=SamplingParams(),
        max_new_tokens=10,
        stop=kwargs.pop("stop", ()),
        end_ids=frozenset({9}),
        decode=lambda ids: "".join(_WORDS[i] for i in ids),
        emit=chunks.append,
        logprobs=kwargs.pop("logprobs", 2),
        **kwargs,
    )


def _entry(token: int) -> TokenLogprob:
    return TokenLogprob(_WORDS[token], -0.1 * token)


def test_each_chunk_carries_the_entries_of_the_tokens_whose_text_it_carries() -> None:
    chunks: list[StreamChunk | BaseException] = []
    job = _job(chunks, stop=("ldx",))  # an "l" or "ld" at the end is held back

    for token in (1, 2, 3, 4):
        job.accept(token, _entry(token))
    job.accept(9, None)  # end of turn: no entry, and the held-back text goes with the last chunk
    carried = [
        (c.text, [e.token for e in c.logprobs], c.finish_reason)
        for c in chunks
        if isinstance(c, StreamChunk)
    ]
    assert carried == [
        ("He", ["Hel"], None),  # a token's entry goes with the first chunk of its text
        ("llo", ["lo"], None),
        (" wor", [" wor"], None),
        ("ld", ["ld"], FinishReason.STOP),
    ]


def test_text_held_back_by_a_stop_sequence_carries_its_entries_later() -> None:
    chunks: list[StreamChunk | BaseException] = []
    job = _job(chunks, stop=("!!",))
    job.accept(1, _entry(1))
    job.accept(5, _entry(5))  # "!" could begin "!!": held back, with its entry
    held = [c for c in chunks if isinstance(c, StreamChunk)]
    assert [(c.text, [e.token for e in c.logprobs]) for c in held] == [("Hel", ["Hel"])]
    job.finish(FinishReason.LENGTH)
    final = chunks[-1]
    assert isinstance(final, StreamChunk)
    assert final.text == "!"
    assert [e.token for e in final.logprobs] == ["!"]


def test_score_is_the_log_softmax_of_the_row_with_the_top_alternatives() -> None:
    job = _job([], logprobs=2)
    logits = torch.tensor([0.0, 3.0, 1.0, 2.0, -1.0, 0.5])
    entry = job.score(logits, 3)
    assert entry is not None
    expected = torch.log_softmax(logits, dim=-1)
    assert entry.token == " wor"
    assert entry.logprob == pytest.approx(float(expected[3]))
    assert [t for t, _ in entry.top] == ["Hel", " wor"]
    assert entry.top[0][1] == pytest.approx(float(expected[1]))
    assert _job([], logprobs=None).score(logits, 3) is None
    assert _job([], logprobs=0).score(logits, 3) == TokenLogprob(" wor", entry.logprob, ())


def test_tokens_a_grammar_ruled_out_are_not_alternatives() -> None:
    job = _job([], logprobs=3)
    entry = job.score(torch.tensor([-math.inf, 1.0, -math.inf, 0.0]), 1)
    assert entry is not None
    assert [t for t, _ in entry.top] == ["Hel", " wor"]


# -- over HTTP ------------------------------------------------------------------------------


class NoLogprobsLLM(FakeLLM):
    supports_logprobs = False


def _client(llm: FakeLLM) -> Iterator[OpenAI]:
    settings = get_settings(limits={"max_choices": 4})
    with TestClient(create_app(settings, InferenceService(settings, llm=llm))) as http:
        deadline = time.monotonic() + 5
        while http.get("/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        yield OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http)


@pytest.fixture
def client() -> Iterator[OpenAI]:
    yield from _client(FakeLLM(["one two three"], model_name="m"))


USER: Any = [{"role": "user", "content": "Hi"}]


def test_chat_logprobs_have_openai_s_shape(client: OpenAI) -> None:
    answer = client.chat.completions.create(
        model="m", messages=USER, logprobs=True, top_logprobs=2, temperature=0
    )
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.content is not None
    assert [e.token for e in logprobs.content] == ["one", " two", " three"]
    first = logprobs.content[0]
    assert first.logprob == pytest.approx(math.log(0.5))
    assert first.bytes == list(b"one")
    assert [t.token for t in first.top_logprobs] == ["one", "alt1"]
    assert first.top_logprobs[1].bytes == list(b"alt1")


def test_without_logprobs_a_choice_has_none(client: OpenAI) -> None:
    answer = client.chat.completions.create(model="m", messages=USER)
    assert answer.choices[0].logprobs is None


def test_streamed_entries_are_the_non_streamed_ones(client: OpenAI) -> None:
    kwargs: Any = {"model": "m", "messages": USER, "logprobs": True, "top_logprobs": 1}
    whole = client.chat.completions.create(**kwargs)
    streamed = []
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            if choice.logprobs is not None and choice.logprobs.content:
                assert choice.delta.content  # entries go with their text
                streamed += choice.logprobs.content
    assert whole.choices[0].logprobs is not None
    assert [e.model_dump() for e in streamed] == [
        e.model_dump() for e in whole.choices[0].logprobs.content or []
    ]


@pytest.mark.parametrize("extra", [{"top_logprobs": 2}, {"logprobs": True, "top_logprobs": 21}])
def test_top_logprobs_without_logprobs_or_above_20_is_a_400_naming_it(
    client: OpenAI, extra: dict[str, Any]
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="m", messages=USER, **extra)
    body = raised.value.body
    assert isinstance(body, dict)
    assert body["param"] == "top_logprobs"


def test_completions_logprobs_have_the_legacy_shape(client: OpenAI) -> None:
    answer = client.completions.create(model="m", prompt="Hi", logprobs=2, max_tokens=5)
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.tokens == ["one", " two", " three"]
    assert logprobs.text_offset == [0, 3, 7]
    assert logprobs.token_logprobs == pytest.approx([math.log(0.5)] * 3)
    assert logprobs.top_logprobs is not None
    assert list(logprobs.top_logprobs[1]) == [" two", "alt1"]
    streamed: list[int] = []
    for chunk in client.completions.create(
        model="m", prompt="Hi", logprobs=2, max_tokens=5, stream=True
    ):
        if chunk.choices and chunk.choices[0].logprobs is not None:
            streamed += chunk.choices[0].logprobs.text_offset or []
    assert streamed == [0, 3, 7]


def test_completions_logprobs_above_20_is_a_400_naming_it(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model="m", prompt="Hi", logprobs=21)
    body = raised.value.body
    assert isinstance(body, dict)
    assert body["param"] == "logprobs"


def test_a_backend_without_logprobs_refuses_them_by_name() -> None:
    for client in _client(NoLogprobsLLM(["one"], model_name="m")):
        with pytest.raises(openai.BadRequestError) as raised:
            client.chat.completions.create(model="m", messages=USER, logprobs=True)
        body = raised.value.body
        assert isinstance(body, dict)
        assert body["param"] == "logprobs"
        assert "log probabilities" in body["message"]
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="m", messages=USER, logprobs=True, stream=True)


@pytest.mark.asyncio
async def test_the_remote_adapter_refuses_logprobs_before_sending_anything() -> None:
    from tests.fake_openai_server import FakeOpenAIServer
    from tests.unit.test_openai_compatible_llm import connected

    fake = FakeOpenAIServer()
    async with connected(fake) as llm:
        config = GenerationConfig(logprobs=2)
        with pytest.raises(InvalidGenerationConfigError) as raised:
            await llm.generate(USER, config)
        assert raised.value.field == "logprobs"
        with pytest.raises(InvalidGenerationConfigError):
            [chunk async for chunk in llm.stream(USER, config)]
        with pytest.raises(InvalidGenerationConfigError):
            await llm.complete("Hi", config)
    assert fake.requests == []
