"""OpenAICompatibleLLM over real HTTP on 127.0.0.1: against our own server (round trips,
streaming, sessions, errors, and our server fronting a remote one), and against the scripted
fake OpenAI server for the failure paths (401, 429 then success, context length, timeouts,
refused connections, a stream that breaks mid-answer)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import OpenAI, RateLimitError

from gemma_chat import (
    BackendOverloadedError,
    BackendUnavailableError,
    ChatSession,
    ConfigurationError,
    ContextLengthExceededError,
    FinishReason,
    InferenceService,
    InvalidGenerationConfigError,
    LLMProtocol,
    LLMRegistry,
    ModelNotFoundError,
    Settings,
    get_settings,
)
from gemma_chat.server import create_app
from gemma_chat.testing import FakeLLM
from gemma_chat.testing.tiny_gemma import build_tiny_gemma
from tests.e2e.servers import free_port, threaded_server
from tests.fake_openai_server import ANSWER, CONTEXT_TOO_LONG, FakeOpenAIServer, Reply, error_reply

KEY = "e2e-key"
SERVED = "served-model"
SERVED_ANSWER = "Hello from the served model"


def no_other_models(settings: Settings) -> LLMProtocol:
    raise ModelNotFoundError(settings.model.name)


@pytest.fixture(scope="module")
def served_llm() -> FakeLLM:
    # Context of 60 estimated tokens: a long message overflows it on the server.
    return FakeLLM([SERVED_ANSWER], model_name=SERVED, context_length=60)


@pytest.fixture(scope="module")
def our_server(served_llm: FakeLLM) -> Iterator[str]:
    """Our server on a FakeLLM: exact answers, and what reached the model is kept."""
    settings = get_settings(
        server={"api_key": KEY},
        storage={"url": "memory://"},
        cache={"enabled": False},
        limits={"max_tokens": 100},
    )
    service = InferenceService(settings, llm=served_llm, registry=LLMRegistry(no_other_models))
    with threaded_server(create_app(settings, service)) as url:
        yield url


@pytest.fixture
def fake() -> Iterator[tuple[FakeOpenAIServer, str]]:
    server = FakeOpenAIServer()
    with threaded_server(server.app) as url:
        yield server, url


def remote(url: str, model: str = f"openai:{SERVED}", **options: Any) -> Settings:
    # max_new_tokens within our server's GEMMA_LIMITS__MAX_TOKENS: the client always sends it.
    return get_settings(
        model={"name": model, "max_new_tokens": 20},
        remote={"base_url": f"{url}/v1", "api_key": KEY, "backoff_seconds": 0.01, **options},
    )


# -- against our own server --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_session_runs_on_our_server_through_the_openai_protocol(
    our_server: str, served_llm: FakeLLM
) -> None:
    session = ChatSession(system_prompt="Be brief.")
    async with InferenceService(remote(our_server)) as service:
        first = await service.generate_response(session, "Hi", temperature=0.5)
        chunks = [c async for c in service.stream_response(session, "And then?", max_new_tokens=3)]
        stats = await service.get_statistics()
        info = await service.get_model_info()
    assert first.content == SERVED_ANSWER
    assert first.model == f"openai:{SERVED}"
    assert first.token_usage.completion_tokens == len(SERVED_ANSWER.split(" "))
    assert "".join(c.text for c in chunks) == "Hello from the"
    assert chunks[-1].finish_reason is FinishReason.LENGTH  # cut at max_new_tokens=3
    assert chunks[-1].token_usage is not None
    assert chunks[-1].token_usage.completion_tokens == 3
    # The second turn sent the whole conversation, the first answer included.
    assert served_llm.messages_seen[-1] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": SERVED_ANSWER},
        {"role": "user", "content": "And then?"},
    ]
    assert [m.content for m in session.messages] == [
        "Hi",
        SERVED_ANSWER,
        "And then?",
        "Hello from the",
    ]
    assert stats["request_count"] == 2
    assert info["backend"] == "openai-compatible"


@pytest.mark.asyncio
async def test_sampling_extras_and_stops_reach_our_servers_model(
    our_server: str, served_llm: FakeLLM
) -> None:
    async with InferenceService(remote(our_server, sampling_extras=True)) as service:
        response = await service.generate_response(
            ChatSession(), "Hi", top_k=5, repetition_penalty=1.2, stop=["served"], seed=3
        )
    assert response.content == "Hello from the "
    kwargs = served_llm.calls[-1].kwargs
    assert (kwargs["top_k"], kwargs["repetition_penalty"], kwargs["seed"]) == (5, 1.2, 3)
    assert kwargs["stop"] == ["served"]


@pytest.mark.asyncio
async def test_a_raw_completion_goes_through_our_servers_completions_route(
    our_server: str, served_llm: FakeLLM
) -> None:
    async with InferenceService(remote(our_server)) as service:
        completion = await service.complete("Once upon a time", max_new_tokens=2)
    assert completion.text == "Hello from"
    assert served_llm.calls[-1].prompt == "Once upon a time"


@pytest.mark.asyncio
async def test_our_servers_refusals_become_the_same_domain_errors(our_server: str) -> None:
    session = ChatSession()
    async with InferenceService(remote(our_server)) as service:
        with pytest.raises(ContextLengthExceededError) as info:
            await service.generate_response(session, "word " * 80)
        with pytest.raises(InvalidGenerationConfigError, match="GEMMA_LIMITS__MAX_TOKENS"):
            await service.generate_response(session, "Hi", max_new_tokens=200)
        with pytest.raises(ContextLengthExceededError):
            async for _ in service.stream_response(session, "word " * 80):
                pass
    assert info.value.context_length == 60
    assert info.value.prompt_tokens is not None
    assert info.value.prompt_tokens > 60
    assert not session.messages


@pytest.mark.asyncio
async def test_a_wrong_key_or_an_unknown_model_is_clear(our_server: str) -> None:
    wrong = get_settings(
        model={"name": f"openai:{SERVED}"},
        remote={"base_url": f"{our_server}/v1", "api_key": "wrong"},
    )
    with pytest.raises(ConfigurationError, match=r"401.*GEMMA_REMOTE__API_KEY"):
        async with InferenceService(wrong):
            pass
    async with InferenceService(remote(our_server, model="openai:no-such-model")) as service:
        with pytest.raises(ModelNotFoundError, match="no-such-model"):
            await service.generate_response(ChatSession(), "Hi")


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """Our server on a real (tiny, random) model: (its URL, the model's name)."""
    model = str(build_tiny_gemma(tmp_path_factory.mktemp("remote-tiny")))
    settings = get_settings(
        model={"name": model, "context_length": 512, "max_new_tokens": 12},
        storage={"url": "memory://"},
        cache_dir=tmp_path_factory.mktemp("remote-tiny-cache"),
    )
    with threaded_server(create_app(settings), timeout=120) as url:
        yield url, model


@pytest.mark.asyncio
async def test_a_real_model_behind_our_server_streams_what_it_answers(
    tiny_server: tuple[str, str],
) -> None:
    url, model = tiny_server
    settings = get_settings(
        model={"name": model, "max_new_tokens": 12}, remote={"base_url": f"{url}/v1"}
    )
    async with InferenceService(settings) as service:
        whole = await service.generate_response(ChatSession(), "Hello", temperature=0)
        await service.clear_cache()
        chunks = [c async for c in service.stream_response(ChatSession(), "Hello", temperature=0)]
    assert "".join(c.text for c in chunks) == whole.content
    assert chunks[-1].token_usage == whole.token_usage
    assert 0 < whole.token_usage.completion_tokens <= 12


# -- our server in front of a remote one -------------------------------------------------------


@pytest.fixture
def front(fake: tuple[FakeOpenAIServer, str]) -> Iterator[tuple[FakeOpenAIServer, str]]:
    """Our server whose model is the fake remote server: (the fake, our server's URL)."""
    server, url = fake
    settings = get_settings(
        model={"name": "fake-remote"},
        remote={"base_url": f"{url}/v1", "max_retries": 1, "backoff_seconds": 0.01},
        storage={"url": "memory://"},
    )
    with threaded_server(create_app(settings)) as front_url:
        yield server, front_url


def test_our_server_fronts_a_remote_engine_for_openai_clients(
    front: tuple[FakeOpenAIServer, str],
) -> None:
    server, url = front
    with OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
        assert [m.id for m in client.models.list().data] == ["fake-remote"]
        answer = client.chat.completions.create(
            model="fake-remote", messages=[{"role": "user", "content": "Hi"}]
        )
        stream = client.chat.completions.create(
            model="fake-remote", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert answer.choices[0].message.content == streamed == ANSWER
    assert server.requests[-1]["messages"] == [{"role": "user", "content": "Hi"}]


def test_a_remote_overload_reaches_clients_as_a_429_and_an_outage_as_a_503(
    front: tuple[FakeOpenAIServer, str],
) -> None:
    server, url = front
    server.script(*[error_reply(429, "busy")] * 2)
    messages: Any = [{"role": "user", "content": "Hi"}]
    chat = {"messages": messages}
    response = httpx.post(f"{url}/v1/chat/completions", json=chat)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "backend_overloaded"
    with OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
        server.script(*[error_reply(429, "busy")] * 2)
        with pytest.raises(RateLimitError):
            client.chat.completions.create(model="fake-remote", messages=messages)
    server.script(*[error_reply(503, "restarting")] * 2)
    response = httpx.post(f"{url}/v1/chat/completions", json=chat)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "backend_unavailable"
    assert "127.0.0.1" not in response.text
    server.script_models(error_reply(503, "restarting"))
    health = httpx.get(f"{url}/health")
    assert health.status_code == 503
    assert "503: restarting" in health.json()["backend_error"]
    assert httpx.get(f"{url}/health").status_code == 200


# -- against the scripted fake server ----------------------------------------------------------


@pytest.mark.asyncio
async def test_a_wrong_key_fails_the_start_with_a_configuration_error(
    fake: tuple[FakeOpenAIServer, str],
) -> None:
    server, url = fake
    server.script_models(error_reply(401, "Invalid API key", code="invalid_api_key"))
    with pytest.raises(ConfigurationError, match="401: Invalid API key"):
        async with InferenceService(remote(url, model="openai:fake-remote")):
            pass


@pytest.mark.asyncio
async def test_a_429_then_success_is_one_answer(fake: tuple[FakeOpenAIServer, str]) -> None:
    server, url = fake
    session = ChatSession()
    async with InferenceService(remote(url, model="openai:fake-remote")) as service:
        server.script(error_reply(429, "busy"), error_reply(429, "busy"))
        response = await service.generate_response(session, "Hi")
        server.script(error_reply(429, "busy"))
        streamed = [c.text async for c in service.stream_response(session, "Again")]
        server.script(*[error_reply(429, "still busy")] * 4)
        with pytest.raises(BackendOverloadedError, match="after 3 retries"):
            await service.generate_response(session, "Once more")
    assert response.content == "".join(streamed) == ANSWER
    assert len(server.requests) == 3 + 2 + 4
    assert [m.content for m in session.messages] == ["Hi", ANSWER, "Again", ANSWER]


@pytest.mark.asyncio
async def test_the_servers_context_error_leaves_the_session_unchanged(
    fake: tuple[FakeOpenAIServer, str],
) -> None:
    server, url = fake
    session = ChatSession()
    async with InferenceService(remote(url, model="openai:fake-remote")) as service:
        server.script(error_reply(400, CONTEXT_TOO_LONG, code="context_length_exceeded"))
        with pytest.raises(ContextLengthExceededError) as info:
            await service.generate_response(session, "a long question")
    assert (info.value.prompt_tokens, info.value.context_length) == (2000, 2048)
    assert not session.messages


@pytest.mark.asyncio
async def test_a_stream_that_breaks_midway_leaves_the_session_unchanged(
    fake: tuple[FakeOpenAIServer, str],
) -> None:
    server, url = fake
    session = ChatSession()
    async with InferenceService(remote(url, model="openai:fake-remote")) as service:
        await service.generate_response(session, "Hi")
        before = session.to_dict()
        server.script(Reply(break_after=2))
        received: list[str] = []
        with pytest.raises(BackendUnavailableError, match="broke after 2 pieces"):
            async for chunk in service.stream_response(session, "Tell me more"):
                received.append(chunk.text)
        assert session.to_dict() == before
        assert received == ["Hello", " from"]
        stats = await service.get_statistics()
        # The next turn works, from the same history.
        await service.generate_response(session, "Tell me more")
    assert stats["error_count"] == 1
    assert [m.content for m in session.messages] == ["Hi", ANSWER, "Tell me more", ANSWER]


@pytest.mark.asyncio
async def test_a_server_slower_than_the_timeout_is_unavailable_not_a_hang(
    fake: tuple[FakeOpenAIServer, str],
) -> None:
    server, url = fake
    settings = remote(url, model="openai:fake-remote", timeout_seconds=0.2)
    async with InferenceService(settings) as service:
        server.script(Reply(delay=1.0))
        with pytest.raises(BackendUnavailableError, match=r"did not answer within 0\.2 s"):
            await service.generate_response(ChatSession(), "Hi")
    assert len(server.requests) == 1  # a timeout is not retried


@pytest.mark.asyncio
async def test_a_stream_that_stalls_midway_times_out_and_records_nothing(
    fake: tuple[FakeOpenAIServer, str],
) -> None:
    server, url = fake
    session = ChatSession()
    settings = remote(url, model="openai:fake-remote", timeout_seconds=0.2)
    async with InferenceService(settings) as service:
        server.script(Reply(pause=1.0))
        with pytest.raises(BackendUnavailableError, match=r"did not answer within 0\.2 s"):
            async for _ in service.stream_response(session, "Hi"):
                pass
    assert not session.messages


@pytest.mark.asyncio
async def test_nothing_listening_is_unavailable_after_the_retries() -> None:
    settings = remote(f"http://127.0.0.1:{free_port()}", max_retries=2)
    with pytest.raises(BackendUnavailableError, match=r"Could not reach .* after 2 retries"):
        async with InferenceService(settings):
            pass


@pytest.mark.asyncio
async def test_a_request_may_name_another_model_of_the_same_server(
    fake: tuple[FakeOpenAIServer, str],
) -> None:
    server, url = fake
    async with InferenceService(remote(url, model="openai:fake-remote")) as service:
        other = await service.generate_response(ChatSession(), "Hi", model="other-model")
        prefixed = await service.generate_response(ChatSession(), "Hi", model="openai:third")
        loaded = (await service.get_model_info())["other_models_loaded"]
    assert [r["model"] for r in server.requests] == ["other-model", "third"]
    assert (other.model, prefixed.model) == ("other-model", "openai:third")
    assert loaded == ["other-model", "openai:third"]
