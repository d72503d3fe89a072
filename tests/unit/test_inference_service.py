"""InferenceService on hand-written fakes: turns, sessions, caching, statistics, health."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gemma_chat import (
    ChatSession,
    FinishReason,
    GenerationConfig,
    InferenceError,
    InferenceService,
    InvalidGenerationConfigError,
    InvalidMessageError,
    LLMProtocol,
    ServiceStateError,
    SessionNotFoundError,
    Settings,
    StreamChunk,
    get_settings,
)
from gemma_chat.testing import FakeLLM, create_mock_llm


@pytest.mark.asyncio
async def test_inference_service() -> None:
    # The example test of the development guide, as written there.
    # Arrange
    mock_llm = create_mock_llm()
    service = InferenceService(llm=mock_llm)

    # Act
    async with service:
        response = await service.generate_response(session=ChatSession(), user_message="test")

    # Assert
    assert response.content == "mock response"
    assert response.token_usage is not None


def greedy_settings(**cache: Any) -> Settings:
    return get_settings(model={"temperature": 0.0}, cache=cache or {"enabled": True})


@pytest.mark.asyncio
async def test_a_turn_adds_both_messages_and_usage_to_the_session() -> None:
    llm = FakeLLM(["Hi there, friend"])
    session = ChatSession(title="t", system_prompt="Be brief.")
    async with InferenceService(llm=llm) as service:
        response = await service.generate_response(session=session, user_message="Hello")

    assert [m.role.value for m in session.messages] == ["user", "assistant"]
    assert session.messages[1].content == "Hi there, friend"
    assert session.messages[1].id == response.message_id
    assert session.token_usage == response.token_usage
    assert response.finish_reason is FinishReason.STOP
    assert response.session_id == session.id
    assert response.model == "fake-llm"
    assert llm.messages_seen[0] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
    ]


@pytest.mark.asyncio
async def test_the_next_turn_sends_the_whole_history() -> None:
    llm = FakeLLM(["one", "two"])
    session = ChatSession()
    async with InferenceService(llm=llm) as service:
        await service.generate_response(session=session, user_message="first")
        await service.generate_response(session=session, user_message="second")
    assert [m["content"] for m in llm.messages_seen[1]] == ["first", "one", "second"]
    assert session.token_usage.total_tokens > 0
    assert len(session.messages) == 4


@pytest.mark.asyncio
async def test_a_failing_model_leaves_the_session_exactly_as_before() -> None:
    llm = FakeLLM(["ok"])
    session = ChatSession()
    async with InferenceService(llm=llm) as service:
        await service.generate_response(session=session, user_message="first")
        before = session.to_dict()
        llm.fail_with = RuntimeError("boom")
        with pytest.raises(InferenceError, match="boom"):
            await service.generate_response(session=session, user_message="second")
        assert session.to_dict() == before
        stats = await service.get_statistics()
        assert stats["error_count"] == 1
        llm.fail_with = None
        response = await service.generate_response(session=session, user_message="third")
    assert response.content == "ok"


@pytest.mark.asyncio
async def test_a_cancelled_turn_leaves_the_session_unchanged() -> None:
    llm = FakeLLM(["slow answer"], delay=10)
    session = ChatSession()
    async with InferenceService(llm=llm) as service:
        task = asyncio.create_task(service.generate_response(session=session, user_message="hi"))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert session.messages == ()
        assert (await service.get_statistics())["cancelled_count"] == 1


@pytest.mark.asyncio
async def test_streamed_chunks_join_to_the_answer_and_end_with_usage() -> None:
    llm = FakeLLM(["a streamed answer here"])
    session = ChatSession()
    async with InferenceService(llm=llm) as service:
        chunks = [c async for c in service.stream_response(session=session, user_message="go")]
    assert "".join(c.text for c in chunks) == "a streamed answer here"
    assert [c.is_final for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].finish_reason is FinishReason.STOP
    assert chunks[-1].token_usage is not None
    assert session.messages[-1].content == "a streamed answer here"


@pytest.mark.asyncio
async def test_a_consumer_that_stops_early_leaves_the_session_unchanged_and_stops_the_model() -> (
    None
):
    llm = FakeLLM(["many words in this streamed answer"])
    session = ChatSession()
    async with InferenceService(llm=llm) as service:
        stream = service.stream_response(session=session, user_message="go")
        first = await anext(stream)
        assert first.text == "many"
        await stream.aclose()
        assert session.messages == ()
        assert llm.streams_closed == 1
        # The session is free again: the next turn completes.
        response = await service.generate_response(session=session, user_message="again")
    assert response.content == "many words in this streamed answer"


@pytest.mark.asyncio
async def test_a_failure_mid_stream_leaves_the_session_unchanged() -> None:
    llm = FakeLLM(["one two three four"])
    llm.fail_after_chunks = 2
    session = ChatSession()
    async with InferenceService(llm=llm) as service:
        received: list[StreamChunk] = []
        with pytest.raises(InferenceError, match="injected"):
            async for chunk in service.stream_response(session=session, user_message="go"):
                received.append(chunk)
        assert [c.text for c in received] == ["one", " two"]
        assert session.messages == ()
        llm.fail_after_chunks = None
        chunks = [c async for c in service.stream_response(session=session, user_message="go")]
    assert "".join(c.text for c in chunks) == "one two three four"
    assert len(session.messages) == 2


@pytest.mark.asyncio
async def test_deterministic_requests_are_answered_from_the_cache() -> None:
    llm = FakeLLM(["first answer", "second answer"])
    async with InferenceService(greedy_settings(), llm=llm) as service:
        a = await service.generate_response(session=ChatSession(), user_message="same")
        b = await service.generate_response(session=ChatSession(), user_message="same")
        session = ChatSession()
        streamed = [c async for c in service.stream_response(session=session, user_message="same")]
        stats = await service.get_statistics()
    assert (a.cached, b.cached) == (False, True)
    assert b.content == a.content == "first answer"
    assert "".join(c.text for c in streamed) == "first answer"
    assert session.messages[-1].content == "first answer"  # a hit still updates the session
    assert len(llm.calls) == 1
    assert stats["cache_hits"] == 2
    assert stats["cache_hit_rate"] == pytest.approx(2 / 3)
    assert stats["cache_size"] == 1


@pytest.mark.asyncio
async def test_sampled_requests_without_a_seed_are_not_cached() -> None:
    llm = FakeLLM(["first", "second"])
    async with InferenceService(get_settings(), llm=llm) as service:
        a = await service.generate_response(ChatSession(), "same", temperature=0.8)
        b = await service.generate_response(ChatSession(), "same", temperature=0.8)
        c = await service.generate_response(ChatSession(), "same", temperature=0.8, seed=7)
        d = await service.generate_response(ChatSession(), "same", temperature=0.8, seed=7)
    assert [r.cached for r in (a, b, c, d)] == [False, False, False, True]


@pytest.mark.asyncio
async def test_a_disabled_cache_is_never_used() -> None:
    llm = FakeLLM(["x"])
    async with InferenceService(greedy_settings(enabled=False), llm=llm) as service:
        await service.generate_response(ChatSession(), "same")
        again = await service.generate_response(ChatSession(), "same")
        await service.clear_cache()
    assert not again.cached
    assert len(llm.calls) == 2


@pytest.mark.asyncio
async def test_generation_parameters_reach_the_model() -> None:
    llm = FakeLLM(["a b c d e f"])
    async with InferenceService(llm=llm) as service:
        response = await service.generate_response(
            ChatSession(), "hi", temperature=0.3, max_new_tokens=2, stop=["zzz"], seed=3
        )
    kwargs = llm.calls[0].kwargs
    assert kwargs["temperature"] == 0.3
    assert kwargs["max_new_tokens"] == 2
    assert kwargs["stop"] == ["zzz"]
    assert kwargs["seed"] == 3
    assert response.content == "a b"


@pytest.mark.asyncio
async def test_settings_give_the_default_generation_parameters() -> None:
    settings = get_settings(model={"temperature": 0.2, "max_new_tokens": 17, "top_k": 5})
    llm = FakeLLM()
    async with InferenceService(settings, llm=llm) as service:
        await service.generate_response(ChatSession(), "hi")
    assert service.default_generation_config() == GenerationConfig(
        temperature=0.2, max_new_tokens=17, top_k=5
    )
    assert llm.calls[0].kwargs["max_new_tokens"] == 17


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"temperature": 3.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"top_p": 0}, "top_p"),
        ({"bogus": 1}, "bogus"),
    ],
)
async def test_bad_generation_parameters_are_rejected_before_the_model_runs(
    overrides: dict[str, Any], message: str
) -> None:
    llm = FakeLLM()
    session = ChatSession()
    async with InferenceService(llm=llm) as service:
        with pytest.raises(InvalidGenerationConfigError, match=message):
            await service.generate_response(session, "hi", **overrides)
    assert llm.calls == []
    assert session.messages == ()


@pytest.mark.asyncio
@pytest.mark.parametrize("message", ["", "   ", None, 42])
async def test_an_empty_or_non_text_user_message_is_rejected(message: Any) -> None:
    async with InferenceService(llm=FakeLLM()) as service:
        with pytest.raises(InvalidMessageError):
            await service.generate_response(ChatSession(), message)
        with pytest.raises(InvalidMessageError):
            async for _ in service.stream_response(ChatSession(), message):
                pass


@pytest.mark.asyncio
async def test_sessions_are_created_listed_used_by_id_and_deleted() -> None:
    llm = FakeLLM(["stored"])
    async with InferenceService(llm=llm) as service:
        session = await service.create_session(
            "Support", system_prompt="Be kind.", metadata={"user": "u1"}
        )
        response = await service.generate_response(session.id, "hello")
        stored = await service.get_session(session.id)
        assert stored.messages[-1].content == "stored"
        assert response.session_id == session.id
        assert [s.id for s in await service.list_sessions()] == [session.id]
        await service.delete_session(session.id)
        with pytest.raises(SessionNotFoundError):
            await service.get_session(session.id)
        with pytest.raises(SessionNotFoundError):
            await service.generate_response(session.id, "hello")


@pytest.mark.asyncio
async def test_turns_on_one_session_run_one_after_the_other() -> None:
    llm = FakeLLM(["a", "b"], delay=0.01)
    session = ChatSession()
    async with InferenceService(llm=llm) as service:
        await asyncio.gather(
            service.generate_response(session, "one"),
            service.generate_response(session, "two"),
        )
    roles = [m.role.value for m in session.messages]
    assert roles == ["user", "assistant", "user", "assistant"]
    # The second turn saw the first one's answer: they did not interleave.
    assert len(llm.messages_seen[1]) == 3


@pytest.mark.asyncio
async def test_statistics_count_requests_latency_and_tokens() -> None:
    llm = FakeLLM(["one two three"])
    async with InferenceService(llm=llm) as service:
        await service.generate_response(ChatSession(), "a", temperature=0.5)
        await service.generate_response(ChatSession(), "b", temperature=0.5)
        stats = await service.get_statistics()
        info = await service.get_model_info()
    assert stats["request_count"] == 2
    assert stats["avg_request_time"] > 0
    assert stats["total_completion_tokens"] == 6
    assert stats["tokens_per_second"] > 0
    assert info["inference_count"] == 2
    assert info["total_tokens_generated"] == 6
    assert info["memory_usage"]["rss_mb"] > 0


@pytest.mark.asyncio
async def test_health_is_unhealthy_before_start_healthy_when_serving_degraded_on_errors() -> None:
    llm = FakeLLM(["ok"])
    service = InferenceService(llm=llm)
    assert (await service.health_check())["status"] == "unhealthy"
    async with service:
        health = await service.health_check()
        assert health["status"] == "healthy"
        assert health["model_info"]["model_name"] == "fake-llm"
        assert "request_count" in health["statistics"]
        llm.fail_with = RuntimeError("down")
        for _ in range(2):
            with pytest.raises(InferenceError):
                await service.generate_response(ChatSession(), "x", temperature=0.5)
        assert (await service.health_check())["status"] == "degraded"
    assert (await service.health_check())["status"] == "unhealthy"


@pytest.mark.asyncio
async def test_using_the_service_outside_its_lifecycle_says_what_to_do() -> None:
    service = InferenceService(llm=FakeLLM())
    with pytest.raises(ServiceStateError, match="async with"):
        await service.generate_response(ChatSession(), "hi")
    async with service:
        pass
    with pytest.raises(ServiceStateError, match="closed"):
        await service.generate_response(ChatSession(), "hi")
    with pytest.raises(ServiceStateError, match="cannot be reopened"):
        await service.start()


@pytest.mark.asyncio
async def test_a_model_passed_in_is_loaded_but_left_loaded_for_its_owner() -> None:
    llm = FakeLLM()
    async with InferenceService(llm=llm):
        assert llm.is_loaded
    assert llm.is_loaded
    assert (llm.load_count, llm.unload_count) == (1, 0)


@pytest.mark.asyncio
async def test_the_service_builds_and_unloads_the_model_registered_for_the_name() -> None:
    from gemma_chat import LLMRegistry

    built: list[FakeLLM] = []

    def factory(settings: Settings) -> LLMProtocol:
        built.append(FakeLLM(model_name=settings.model.name))
        return built[-1]

    registry = LLMRegistry()
    registry.register("my-model", factory)
    settings = get_settings(model={"name": "org/My-Model-v2"})
    async with InferenceService(settings, registry=registry) as service:
        response = await service.generate_response(ChatSession(), "hi")
    assert response.model == "org/My-Model-v2"
    assert (built[0].load_count, built[0].unload_count) == (1, 1)


class ProtocolOnlyLLM:
    """An adapter written against LLMProtocol alone, without BaseLLM."""

    model_name = "protocol-only"
    is_loaded = False

    async def load(self) -> None:
        self.is_loaded = True

    async def unload(self) -> None:
        self.is_loaded = False

    async def generate(self, messages: Any, config: GenerationConfig) -> Any:
        raise ValueError("backend exploded")

    async def stream(self, messages: Any, config: GenerationConfig) -> AsyncIterator[StreamChunk]:
        yield StreamChunk("partial")
        raise ValueError("backend exploded")

    def count_tokens(self, text: str) -> int:
        return len(text)

    def get_model_info(self) -> dict[str, Any]:
        return {"model_name": self.model_name}


@pytest.mark.asyncio
async def test_errors_of_adapters_outside_base_llm_become_inference_errors() -> None:
    llm = ProtocolOnlyLLM()
    assert isinstance(llm, LLMProtocol)
    session = ChatSession()
    async with InferenceService(llm=llm) as service:
        with pytest.raises(InferenceError, match="backend exploded"):
            await service.generate_response(session, "hi")
        with pytest.raises(InferenceError, match="backend exploded"):
            async for _ in service.stream_response(session, "hi"):
                pass
    assert session.messages == ()


@pytest.mark.asyncio
async def test_raw_completions_use_no_session_and_no_chat_format() -> None:
    llm = FakeLLM(["continued text here"])
    async with InferenceService(llm=llm) as service:
        completion = await service.complete("Once upon", max_new_tokens=2)
        chunks = [c async for c in service.stream_completion("Once upon")]
        with pytest.raises(InvalidMessageError):
            await service.complete("")
    assert completion.text == "continued text"
    assert "".join(c.text for c in chunks) == "continued text here"
    assert llm.calls[0].prompt == "Once upon"


@pytest.mark.asyncio
async def test_a_backend_without_raw_completions_says_so() -> None:
    async with InferenceService(llm=ProtocolOnlyLLM()) as service:
        with pytest.raises(InvalidGenerationConfigError, match="raw prompts"):
            await service.complete("Once upon")


@pytest.mark.asyncio
async def test_odd_characters_a_model_wrote_do_not_poison_the_next_turn() -> None:
    llm = FakeLLM(["odd \x04 bytes \x00", "fine"])
    session = ChatSession()
    async with InferenceService(llm=llm) as service:
        await service.generate_response(session, "first")
        second = await service.generate_response(session, "second")
        with pytest.raises(InvalidMessageError, match="control character"):
            await service.generate_response(session, "typed \x04 by a client")
    assert second.content == "fine"
    assert session.messages[1].content == "odd \x04 bytes \x00"


@pytest.mark.asyncio
async def test_a_generation_over_the_time_limit_ends_with_a_clear_error() -> None:
    from gemma_chat import GenerationTimeoutError

    settings = get_settings(limits={"request_timeout_seconds": 0.05})
    llm = FakeLLM(["one two three four five six"], delay=0.1)
    session = ChatSession()
    async with InferenceService(settings, llm=llm) as service:
        with pytest.raises(GenerationTimeoutError, match="GEMMA_LIMITS__REQUEST_TIMEOUT_SECONDS"):
            await service.generate_response(session, "hi")
        with pytest.raises(GenerationTimeoutError):
            async for _ in service.stream_response(session, "hi"):
                pass
        assert session.messages == ()
        assert llm.streams_closed == 1  # the stream was closed: its generation stopped
        llm.delay = 0
        assert (await service.generate_response(session, "hi")).content


@pytest.mark.asyncio
async def test_streams_count_cancellations_only_when_stopped_early() -> None:
    llm = FakeLLM(["one two three"])
    async with InferenceService(llm=llm) as service:
        [c async for c in service.stream_response(ChatSession(), "a")]
        [c async for c in service.stream_completion("a")]
        assert (await service.get_statistics())["cancelled_count"] == 0
        for stream in (service.stream_response(ChatSession(), "b"), service.stream_completion("b")):
            await anext(stream)
            await stream.aclose()  # type: ignore[attr-defined]
        stats = await service.get_statistics()
    assert stats["cancelled_count"] == 2
    assert llm.streams_closed == 4
