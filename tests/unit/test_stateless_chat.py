"""``InferenceService.chat`` / ``stream_chat``: a whole conversation in, an answer out, nothing
stored."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gemma_chat import (
    ChatMessage,
    FinishReason,
    GenerationTimeoutError,
    InferenceError,
    InferenceService,
    InvalidGenerationConfigError,
    InvalidMessageError,
    get_settings,
)
from gemma_chat.testing import FakeLLM

CONVERSATION: list[ChatMessage] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "How are you?"},
]


@pytest.mark.asyncio
async def test_chat_answers_the_last_message_with_the_whole_conversation_and_stores_nothing() -> (
    None
):
    llm = FakeLLM(["Fine, thanks"])
    async with InferenceService(llm=llm) as service:
        response = await service.chat(CONVERSATION)
        assert await service.list_sessions() == []
        stats = await service.get_statistics()
    assert response.content == "Fine, thanks"
    assert response.session_id is None
    assert response.message_id
    assert response.model == "fake-llm"
    assert response.finish_reason is FinishReason.STOP
    assert response.token_usage.completion_tokens > 0
    assert llm.messages_seen == [CONVERSATION]
    assert stats["request_count"] == 1


@pytest.mark.asyncio
async def test_system_messages_are_joined_into_one_first_as_a_session_gives_them() -> None:
    llm = FakeLLM(["ok"])
    messages: list[ChatMessage] = [
        {"role": "user", "content": "one"},
        {"role": "system", "content": "A."},
        {"role": "assistant", "content": ""},
        {"role": "system", "content": "B."},
        {"role": "user", "content": "two"},
    ]
    async with InferenceService(llm=llm) as service:
        await service.chat(messages)
        await service.chat([{"role": "system", "content": "  "}, {"role": "user", "content": "x"}])
    assert llm.messages_seen == [
        [
            {"role": "system", "content": "A.\n\nB."},
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "two"},
        ],
        [{"role": "user", "content": "x"}],
    ]


@pytest.mark.asyncio
async def test_stream_chat_ends_with_the_finish_reason_and_usage() -> None:
    llm = FakeLLM(["a streamed answer"])
    async with InferenceService(llm=llm) as service:
        chunks = [c async for c in service.stream_chat(CONVERSATION, temperature=0.3)]
        stats = await service.get_statistics()
    assert "".join(c.text for c in chunks) == "a streamed answer"
    assert [c.is_final for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].token_usage is not None
    assert chunks[-1].token_usage.completion_tokens == 3
    assert llm.calls[0].kwargs["temperature"] == 0.3
    assert stats["request_count"] == 1


@pytest.mark.asyncio
async def test_deterministic_chats_are_answered_from_the_cache_shared_with_sessions() -> None:
    llm = FakeLLM(["first", "second"])
    settings = get_settings(model={"temperature": 0.0}, cache={"enabled": True})
    async with InferenceService(settings, llm=llm) as service:
        session = await service.create_session(system_prompt="Be brief.")
        turn = await service.generate_response(session, "Hi")
        a = await service.chat(
            [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
            ]
        )
        streamed = [c async for c in service.stream_chat([{"role": "user", "content": "Hey"}])]
        again = [c async for c in service.stream_chat([{"role": "user", "content": "Hey"}])]
    assert (turn.cached, a.cached, a.content) == (False, True, "first")
    assert "".join(c.text for c in streamed) == "".join(c.text for c in again) == "second"
    assert len(llm.calls) == 2


@pytest.mark.parametrize(
    ("messages", "where"),
    [
        ([], "must not be empty"),
        ("hello", "must be a list"),
        ([{"role": "user", "content": "a"}, "b"], r"messages\[1\] must be"),
        ([{"role": "wizard", "content": "a"}], r"messages\[0\]\.role"),
        ([{"role": "user", "content": ""}], r"messages\[0\]\.content must not be empty"),
        ([{"role": "user", "content": 5}], r"messages\[0\]\.content must be a string"),
        (
            [{"role": "system", "content": "s"}, {"role": "user", "content": "bad \x01"}],
            r"messages\[1\]\.content contains the control character",
        ),
        (
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            r"messages\[1\]\.role must be 'user'",
        ),
    ],
)
@pytest.mark.asyncio
async def test_bad_messages_are_rejected_naming_the_message(messages: Any, where: str) -> None:
    llm = FakeLLM()
    async with InferenceService(llm=llm) as service:
        with pytest.raises(InvalidMessageError, match=where):
            await service.chat(messages)
        with pytest.raises(InvalidMessageError, match=where):
            async for _ in service.stream_chat(messages):
                pass
    assert llm.calls == []


@pytest.mark.asyncio
async def test_the_limits_on_messages_apply() -> None:
    settings = get_settings(limits={"max_messages": 2, "max_message_chars": 10, "max_tokens": 5})
    llm = FakeLLM()
    async with InferenceService(settings, llm=llm) as service:
        with pytest.raises(InvalidMessageError, match="GEMMA_LIMITS__MAX_MESSAGES"):
            await service.chat([{"role": "user", "content": "a"}] * 3)
        with pytest.raises(InvalidMessageError, match=r"messages\[0\]\.content has 11"):
            await service.chat(
                [{"role": "system", "content": "x" * 11}, {"role": "user", "content": "a"}]
            )
        with pytest.raises(InvalidGenerationConfigError, match="GEMMA_LIMITS__MAX_TOKENS"):
            await service.chat([{"role": "user", "content": "a"}], max_new_tokens=6)
        with pytest.raises(InvalidGenerationConfigError, match="Unknown generation parameter"):
            await service.chat([{"role": "user", "content": "a"}], nonsense=1)
    assert llm.calls == []


@pytest.mark.asyncio
async def test_failures_time_limits_and_cancellations_are_counted() -> None:
    settings = get_settings(limits={"request_timeout_seconds": 0.05})
    llm = FakeLLM(["one two three four"], delay=0.1)
    question: list[ChatMessage] = [{"role": "user", "content": "q"}]
    async with InferenceService(settings, llm=llm) as service:
        with pytest.raises(GenerationTimeoutError):
            await service.chat(question)
        with pytest.raises(GenerationTimeoutError):
            async for _ in service.stream_chat(question):
                pass
        llm.delay = 0
        llm.fail_with = RuntimeError("boom")
        with pytest.raises(InferenceError, match="boom"):
            await service.chat(question)
        llm.fail_with = None
        stream = service.stream_chat(question)
        await anext(stream)
        await stream.aclose()  # type: ignore[attr-defined]
        llm.delay = 10
        task = asyncio.create_task(service.chat(question))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stats = await service.get_statistics()
    assert stats["error_count"] == 3
    assert stats["cancelled_count"] == 2
    assert llm.streams_closed == 2
