"""OpenAICompatibleLLM against the scripted fake server, in process (an ASGI transport, no
sockets): requests, answers, streams, retries and the errors they become."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import openai
import pytest

from gemma_chat import (
    BackendOverloadedError,
    BackendUnavailableError,
    ChatSession,
    ConfigurationError,
    ContextLengthExceededError,
    FinishReason,
    GenerationConfig,
    InferenceError,
    InferenceService,
    InvalidGenerationConfigError,
    ModelNotFoundError,
    ModelNotLoadedError,
    Settings,
    TokenUsage,
    get_settings,
)
from gemma_chat.infrastructure.llm.adapters.openai_compatible import (
    OPENAI_BASE_URL,
    OpenAICompatibleLLM,
)
from tests.fake_openai_server import ANSWER, CONTEXT_TOO_LONG, FakeOpenAIServer, Reply, error_reply

BASE_URL = "http://fake.test/v1"
HI = [{"role": "user", "content": "Hi"}]


def remote_settings(name: str = "openai:fake-remote", **remote: Any) -> Settings:
    return get_settings(
        model={"name": name},
        remote={"base_url": BASE_URL, "backoff_seconds": 0.001, **remote},
    )


@asynccontextmanager
async def connected(
    fake: FakeOpenAIServer, settings: Settings | None = None, **remote: Any
) -> AsyncIterator[OpenAICompatibleLLM]:
    transport = httpx2.ASGITransport(app=fake.app)
    async with openai.DefaultAsyncHttpxClient(transport=transport) as http:
        llm = OpenAICompatibleLLM(settings or remote_settings(**remote), http_client=http)
        await llm.load()
        try:
            yield llm
        finally:
            await llm.unload()


@pytest.fixture
def fake() -> FakeOpenAIServer:
    return FakeOpenAIServer()


def status_error(
    status: int, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> openai.APIStatusError:
    request = httpx2.Request("POST", f"{BASE_URL}/chat/completions")
    response = httpx2.Response(status, headers=headers or {}, request=request)
    classes = {429: openai.RateLimitError, 401: openai.AuthenticationError}
    error_class = classes.get(status, openai.APIStatusError)
    return error_class("refused", response=response, body=body or {"message": "refused"})


# -- names, keys and what is sent --------------------------------------------------------------


def test_the_prefix_names_the_remote_model_and_openai_is_the_default_server() -> None:
    llm = OpenAICompatibleLLM(get_settings(model={"name": "openai:gpt-4o-mini"}))
    assert llm.remote_model == "gpt-4o-mini"
    assert llm.model_name == "openai:gpt-4o-mini"
    assert llm.base_url == OPENAI_BASE_URL
    assert llm.is_openai


def test_with_a_base_url_a_name_without_prefix_is_the_remote_model() -> None:
    llm = OpenAICompatibleLLM(remote_settings("meta-llama/Llama-3.1-8B-Instruct"))
    assert llm.remote_model == "meta-llama/Llama-3.1-8B-Instruct"
    assert not llm.is_openai


def test_a_prefix_without_a_model_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="names no model"):
        OpenAICompatibleLLM(get_settings(model={"name": "openai:"}))


@pytest.mark.asyncio
async def test_openai_without_any_key_is_a_configuration_error_naming_both_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    llm = OpenAICompatibleLLM(get_settings(model={"name": "openai:gpt-4o-mini"}))
    with pytest.raises(ConfigurationError, match="GEMMA_REMOTE__API_KEY or OPENAI_API_KEY"):
        await llm.load()
    assert not llm.is_loaded


@pytest.mark.asyncio
async def test_openai_api_key_goes_to_openai_only(
    fake: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-openai-key")
    assert OpenAICompatibleLLM(get_settings(model={"name": "openai:x"}))._api_key() == (
        "sk-secret-openai-key"
    )
    async with connected(fake):
        pass
    assert fake.headers[0]["authorization"] == "Bearer EMPTY"


@pytest.mark.asyncio
async def test_the_configured_key_is_sent_as_a_bearer_token(fake: FakeOpenAIServer) -> None:
    async with connected(fake, api_key="key-123") as llm:
        await llm.generate(HI, GenerationConfig())
    assert {h["authorization"] for h in fake.headers} == {"Bearer key-123"}


@pytest.mark.asyncio
async def test_the_conversation_and_the_parameters_reach_the_server(
    fake: FakeOpenAIServer,
) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "And?"},
    ]
    config = GenerationConfig(temperature=0.2, top_p=0.5, max_new_tokens=7, stop=("x",), seed=3)
    async with connected(fake) as llm:
        await llm.generate(messages, config)
    sent = fake.requests[-1]
    assert sent["messages"] == messages
    assert sent["model"] == "fake-remote"
    assert (sent["temperature"], sent["top_p"], sent["max_tokens"]) == (0.2, 0.5, 7)
    assert (sent["stop"], sent["seed"]) == (["x"], 3)
    # Not OpenAI's: left to the server unless GEMMA_REMOTE__SAMPLING_EXTRAS is on.
    assert "top_k" not in sent
    assert "repetition_penalty" not in sent


@pytest.mark.asyncio
async def test_no_stop_and_no_seed_are_left_out(fake: FakeOpenAIServer) -> None:
    async with connected(fake) as llm:
        await llm.generate(HI, GenerationConfig())
    assert "stop" not in fake.requests[-1]
    assert "seed" not in fake.requests[-1]


@pytest.mark.asyncio
async def test_sampling_extras_send_top_k_and_repetition_penalty_when_they_change_anything(
    fake: FakeOpenAIServer,
) -> None:
    async with connected(fake, sampling_extras=True) as llm:
        await llm.generate(HI, GenerationConfig(top_k=40, repetition_penalty=1.2))
        await llm.generate(HI, GenerationConfig(top_k=0, repetition_penalty=1.0))
    assert (fake.requests[0]["top_k"], fake.requests[0]["repetition_penalty"]) == (40, 1.2)
    assert "top_k" not in fake.requests[1]
    assert "repetition_penalty" not in fake.requests[1]


def test_openais_chat_api_gets_max_completion_tokens_and_others_max_tokens() -> None:
    kwargs = GenerationConfig(max_new_tokens=9).to_dict()
    openai_llm = OpenAICompatibleLLM(get_settings(model={"name": "openai:gpt-4o-mini"}))
    assert openai_llm._params(kwargs, raw=False)["max_completion_tokens"] == 9
    assert openai_llm._params(kwargs, raw=True)["max_tokens"] == 9
    assert OpenAICompatibleLLM(remote_settings())._params(kwargs, raw=False)["max_tokens"] == 9


# -- answers -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_an_answer_carries_the_servers_usage_and_finish_reason(
    fake: FakeOpenAIServer,
) -> None:
    fake.script(Reply(text="one two three", finish_reason="length"))
    async with connected(fake) as llm:
        completion = await llm.generate(HI, GenerationConfig())
    assert completion.text == "one two three"
    assert completion.finish_reason is FinishReason.LENGTH
    assert completion.token_usage == TokenUsage(11, 3)
    assert llm.inference_count == 1


@pytest.mark.asyncio
async def test_without_usage_from_the_server_the_tokens_are_estimated(
    fake: FakeOpenAIServer,
) -> None:
    fake.script(Reply(text="one two three", usage=False), Reply(text="one two three", usage=False))
    async with connected(fake) as llm:
        completion = await llm.generate(HI, GenerationConfig())
        chunks = [c async for c in llm.stream(HI, GenerationConfig())]
    assert completion.token_usage.completion_tokens == 3
    assert completion.token_usage.prompt_tokens > 0
    assert chunks[-1].token_usage == completion.token_usage


@pytest.mark.asyncio
async def test_a_stream_yields_the_pieces_then_the_usage_it_asked_for(
    fake: FakeOpenAIServer,
) -> None:
    async with connected(fake) as llm:
        chunks = [c async for c in llm.stream(HI, GenerationConfig())]
    assert "".join(c.text for c in chunks) == ANSWER
    assert len(chunks) > 2
    assert chunks[-1].finish_reason is FinishReason.STOP
    assert chunks[-1].token_usage == TokenUsage(11, len(ANSWER.split(" ")))
    assert fake.requests[-1]["stream"] is True
    assert fake.requests[-1]["stream_options"] == {"include_usage": True}


@pytest.mark.asyncio
async def test_stop_sequences_cut_the_answer_even_if_the_server_ignored_them(
    fake: FakeOpenAIServer,
) -> None:
    fake.script(Reply(text="one two STOP three"), Reply(text="one two STOP three"))
    config = GenerationConfig(stop=("STOP",))
    async with connected(fake) as llm:
        completion = await llm.generate(HI, config)
        streamed = "".join([c.text async for c in llm.stream(HI, config)])
    assert completion.text == streamed == "one two "


@pytest.mark.asyncio
async def test_a_raw_prompt_goes_to_the_completions_route(fake: FakeOpenAIServer) -> None:
    fake.script(Reply(text="upon a time"), Reply(text="upon a time"))
    async with connected(fake) as llm:
        completion = await llm.complete("Once", GenerationConfig(max_new_tokens=5))
        chunks = [c async for c in llm.stream_completion("Once", GenerationConfig())]
    assert completion.text == "upon a time"
    assert "".join(c.text for c in chunks) == "upon a time"
    assert fake.requests[0]["prompt"] == "Once"
    assert fake.requests[0]["max_tokens"] == 5
    assert "messages" not in fake.requests[0]


@pytest.mark.asyncio
async def test_a_stream_that_ends_without_a_finish_reason_is_an_error(
    fake: FakeOpenAIServer,
) -> None:
    fake.script(Reply(finish_reason=None))
    async with connected(fake) as llm:
        with pytest.raises(BackendUnavailableError, match="before the answer was finished"):
            async for _ in llm.stream(HI, GenerationConfig()):
                pass


@pytest.mark.asyncio
async def test_an_empty_list_of_choices_is_an_inference_error(fake: FakeOpenAIServer) -> None:
    fake.script(Reply(choices=False))
    async with connected(fake) as llm:
        with pytest.raises(InferenceError, match="without any choice"):
            await llm.generate(HI, GenerationConfig())


# -- lifecycle, health, info -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_generating_before_load_says_so() -> None:
    llm = OpenAICompatibleLLM(remote_settings())
    with pytest.raises(ModelNotLoadedError):
        await llm.generate(HI, GenerationConfig())
    with pytest.raises(ModelNotLoadedError, match="not connected"):
        await llm.check_health()


@pytest.mark.asyncio
async def test_a_model_the_server_does_not_list_still_loads(fake: FakeOpenAIServer) -> None:
    async with connected(fake, settings=remote_settings("openai:other-name")) as llm:
        assert llm.is_loaded


@pytest.mark.asyncio
async def test_model_info_names_the_backend_and_the_url_without_secrets(
    fake: FakeOpenAIServer,
) -> None:
    settings = remote_settings(base_url="http://user:pw@fake.test/v1")
    async with connected(fake, settings=settings) as llm:
        info = llm.get_model_info()
    assert info["backend"] == "openai-compatible"
    assert info["base_url"] == "http://fake.test/v1"
    assert info["remote_model"] == "fake-remote"
    assert "pw" not in repr(info)


@pytest.mark.asyncio
async def test_health_asks_the_server_for_its_models(fake: FakeOpenAIServer) -> None:
    async with connected(fake) as llm:
        await llm.check_health()
        fake.script_models(error_reply(503, "down for maintenance"))
        with pytest.raises(BackendUnavailableError, match="503"):
            await llm.check_health()


@pytest.mark.asyncio
async def test_the_service_reports_a_failing_server_as_unhealthy(fake: FakeOpenAIServer) -> None:
    async with connected(fake) as llm, InferenceService(llm=llm) as service:
        assert (await service.health_check())["status"] == "healthy"
        fake.script_models(error_reply(503, "down for maintenance"))
        report = await service.health_check()
    assert report["status"] == "unhealthy"
    assert "503" in report["backend_error"]


# -- retries and errors ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_429_is_retried_then_answered(fake: FakeOpenAIServer) -> None:
    fake.script(*[error_reply(429, "slow down", kind="rate_limit_error")] * 2)
    async with connected(fake, max_retries=2) as llm:
        completion = await llm.generate(HI, GenerationConfig())
    assert completion.text == ANSWER
    assert len(fake.requests) == 3


@pytest.mark.asyncio
async def test_a_429_after_every_retry_is_a_clear_overload_error(fake: FakeOpenAIServer) -> None:
    fake.script(*[error_reply(429, "slow down")] * 3)
    async with connected(fake, max_retries=2) as llm:
        with pytest.raises(BackendOverloadedError, match=r"overloaded \(429: slow down\) after 2"):
            await llm.generate(HI, GenerationConfig())
    assert len(fake.requests) == 3
    assert not fake.replies


@pytest.mark.asyncio
async def test_a_retry_after_longer_than_the_longest_backoff_gives_up_at_once(
    fake: FakeOpenAIServer,
) -> None:
    busy = error_reply(429, "busy")
    busy.headers = {"Retry-After": "120"}
    fake.script(busy)
    async with connected(fake, max_backoff_seconds=1.0) as llm:
        with pytest.raises(BackendOverloadedError) as info:
            await llm.generate(HI, GenerationConfig())
    assert info.value.retry_after == 120
    assert len(fake.requests) == 1


@pytest.mark.asyncio
async def test_an_exhausted_quota_is_a_configuration_error_and_not_retried(
    fake: FakeOpenAIServer,
) -> None:
    fake.script(error_reply(429, "You exceeded your current quota", code="insufficient_quota"))
    async with connected(fake) as llm:
        with pytest.raises(ConfigurationError, match="quota"):
            await llm.generate(HI, GenerationConfig())
    assert len(fake.requests) == 1


@pytest.mark.asyncio
async def test_a_server_error_is_retried_and_a_lasting_503_is_unavailable(
    fake: FakeOpenAIServer,
) -> None:
    fake.script(error_reply(500, "oops"))
    async with connected(fake, max_retries=1) as llm:
        assert (await llm.generate(HI, GenerationConfig())).text == ANSWER
        fake.script(*[error_reply(503, "warming up")] * 2)
        with pytest.raises(BackendUnavailableError, match="503: warming up"):
            await llm.generate(HI, GenerationConfig())


@pytest.mark.asyncio
async def test_a_refused_stream_is_retried_before_it_starts(fake: FakeOpenAIServer) -> None:
    fake.script(error_reply(429, "slow down"))
    async with connected(fake) as llm:
        chunks = [c async for c in llm.stream(HI, GenerationConfig())]
    assert "".join(c.text for c in chunks) == ANSWER


@pytest.mark.asyncio
async def test_a_wrong_key_is_a_configuration_error_when_loading(fake: FakeOpenAIServer) -> None:
    fake.script_models(error_reply(401, "Incorrect API key provided", code="invalid_api_key"))
    with pytest.raises(ConfigurationError, match=r"401: Incorrect API key.*GEMMA_REMOTE__API_KEY"):
        async with connected(fake):
            pass
    assert len(fake.headers) == 1  # never retried


@pytest.mark.asyncio
async def test_a_base_url_without_a_models_route_is_a_configuration_error(
    fake: FakeOpenAIServer,
) -> None:
    fake.script_models(error_reply(404, "Not Found"))
    with pytest.raises(ConfigurationError, match="usually ending in /v1"):
        async with connected(fake):
            pass


@pytest.mark.asyncio
async def test_an_unknown_model_is_model_not_found_with_remote_hints(
    fake: FakeOpenAIServer,
) -> None:
    fake.script(error_reply(404, "The model `nope` does not exist", code="model_not_found"))
    async with connected(fake) as llm:
        with pytest.raises(ModelNotFoundError) as info:
            await llm.generate(HI, GenerationConfig())
    assert "does not exist" in str(info.value)
    assert "GET http://fake.test/v1/models" in str(info.value)
    assert "hf download" not in str(info.value)


@pytest.mark.asyncio
async def test_a_rejected_parameter_is_an_invalid_generation_config(
    fake: FakeOpenAIServer,
) -> None:
    fake.script(error_reply(400, "Unsupported value: 'temperature'"))
    async with connected(fake) as llm:
        with pytest.raises(InvalidGenerationConfigError, match="Unsupported value"):
            await llm.generate(HI, GenerationConfig())


@pytest.mark.parametrize(
    ("reply", "prompt_tokens", "context_length"),
    [
        (error_reply(400, CONTEXT_TOO_LONG, code="context_length_exceeded"), 2000, 2048),
        (  # OpenAI
            error_reply(
                400,
                "This model's maximum context length is 128000 tokens. However, your messages "
                "resulted in 130000 tokens. Please reduce the length of the messages.",
                code="context_length_exceeded",
            ),
            130000,
            128000,
        ),
        (  # TGI
            error_reply(
                422,
                "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. "
                "Given: 4000 `inputs` tokens and 256 `max_new_tokens`",
                kind="validation",
            ),
            4000,
            4096,
        ),
        (  # gemma-chat
            error_reply(
                400,
                "The conversation needs 600 prompt tokens + 256 new tokens = 856 tokens, but "
                "the model's context window is 512 tokens.",
                code="context_length_exceeded",
            ),
            600,
            512,
        ),
        (  # llama.cpp: the numbers as fields
            Reply(
                400,
                error={
                    "code": 400,
                    "message": "the request exceeds the available context size, try increasing it",
                    "type": "exceed_context_size_error",
                    "n_prompt_tokens": 5000,
                    "n_ctx": 4096,
                },
            ),
            5000,
            4096,
        ),
        (error_reply(400, "Prompt is too long"), None, None),
    ],
)
@pytest.mark.asyncio
async def test_every_servers_context_error_is_context_length_exceeded(
    fake: FakeOpenAIServer, reply: Reply, prompt_tokens: int | None, context_length: int | None
) -> None:
    fake.script(reply)
    async with connected(fake) as llm:
        with pytest.raises(ContextLengthExceededError) as info:
            await llm.generate(HI, GenerationConfig(max_new_tokens=256))
    error = info.value
    assert (error.prompt_tokens, error.context_length) == (prompt_tokens, context_length)
    assert error.max_new_tokens == 256
    assert error.detail
    assert error.detail in str(error)


@pytest.mark.asyncio
async def test_a_context_error_before_a_stream_starts_is_raised_by_the_stream(
    fake: FakeOpenAIServer,
) -> None:
    fake.script(error_reply(400, CONTEXT_TOO_LONG, code="context_length_exceeded"))
    async with connected(fake) as llm:
        with pytest.raises(ContextLengthExceededError):
            async for _ in llm.stream(HI, GenerationConfig()):
                pass


def test_the_backoff_doubles_with_jitter_up_to_its_limit() -> None:
    llm = OpenAICompatibleLLM(
        remote_settings(backoff_seconds=1.0, max_backoff_seconds=4.0, max_retries=9)
    )
    busy = status_error(429)
    delays = [llm._retry_delay(busy, attempt) for attempt in range(5)]
    for delay, limit in zip(delays, [1.0, 2.0, 4.0, 4.0, 4.0], strict=True):
        assert delay is not None
        assert limit / 2 <= delay <= limit


def test_the_server_retry_after_is_a_lower_bound_on_the_wait() -> None:
    llm = OpenAICompatibleLLM(remote_settings(backoff_seconds=0.01, max_backoff_seconds=5.0))
    assert llm._retry_delay(status_error(429, headers={"retry-after": "2"}), 0) == 2.0
    assert llm._retry_delay(status_error(429, headers={"retry-after-ms": "1500"}), 0) == 1.5
    date = "Wed, 21 Oct 2015 07:28:00 GMT"  # in the past: no wait beyond the backoff
    delay = llm._retry_delay(status_error(429, headers={"retry-after": date}), 0)
    assert delay is not None
    assert delay <= 0.01
    garbage = llm._retry_delay(status_error(429, headers={"retry-after": "soon"}), 0)
    assert garbage is not None
    assert garbage <= 0.01


def test_what_is_not_retried() -> None:
    llm = OpenAICompatibleLLM(remote_settings(max_retries=3))
    request = httpx2.Request("POST", BASE_URL)
    assert llm._retry_delay(status_error(429), 3) is None  # out of retries
    assert llm._retry_delay(status_error(400), 0) is None
    assert llm._retry_delay(status_error(401), 0) is None
    assert llm._retry_delay(openai.APITimeoutError(request=request), 0) is None
    assert llm._retry_delay(openai.APIConnectionError(request=request), 0) is not None


def test_a_timeout_names_the_setting_to_raise() -> None:
    llm = OpenAICompatibleLLM(remote_settings(timeout_seconds=30))
    error = llm.map_error(openai.APITimeoutError(request=httpx2.Request("POST", BASE_URL)))
    assert isinstance(error, BackendUnavailableError)
    assert "within 30 s (GEMMA_REMOTE__TIMEOUT_SECONDS)" in str(error)


def test_other_failures_keep_their_message() -> None:
    llm = OpenAICompatibleLLM(remote_settings())
    request = httpx2.Request("POST", BASE_URL)
    streamed = llm.map_error(
        openai.APIError("An error occurred during streaming", request, body=None)
    )
    assert isinstance(streamed, InferenceError)
    assert "error occurred during streaming" in str(streamed)
    teapot = llm.map_error(status_error(418, {"message": "I'm a teapot"}))
    assert type(teapot) is InferenceError
    assert "418: I'm a teapot" in str(teapot)
    assert type(llm.map_error(ValueError("odd"))) is InferenceError


@pytest.mark.asyncio
async def test_a_turn_that_fails_leaves_the_session_as_it_was(fake: FakeOpenAIServer) -> None:
    session = ChatSession()
    async with connected(fake) as llm, InferenceService(llm=llm) as service:
        await service.generate_response(session, "Hi")
        fake.script(error_reply(400, CONTEXT_TOO_LONG, code="context_length_exceeded"))
        with pytest.raises(ContextLengthExceededError):
            await service.generate_response(session, "Again")
    assert [m.content for m in session.messages] == ["Hi", ANSWER]
