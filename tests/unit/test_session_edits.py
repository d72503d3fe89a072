"""Changing a session between turns (rename, system prompt, metadata) and regenerating its last
answer: all or nothing, under the session's lock, the old answer kept until a new one is done."""

from __future__ import annotations

import asyncio

import pytest

from gemma_chat import (
    ChatSession,
    InferenceError,
    InferenceService,
    InvalidMessageError,
    NothingToRegenerateError,
    SessionNotFoundError,
    TokenUsage,
)
from gemma_chat.testing import FakeLLM

USAGE = TokenUsage(prompt_tokens=3, completion_tokens=2)


def answered(*turns: tuple[str, str]) -> ChatSession:
    session = ChatSession("t")
    for question, answer in turns:
        session.record_turn(question, answer, USAGE)
    return session


# -- the domain ----------------------------------------------------------------------------


def test_last_turn_is_the_last_question_and_its_answer() -> None:
    session = answered(("one", "1"), ("two", "2"))
    user, assistant = session.last_turn()
    assert (user.content, assistant.content) == ("two", "2")
    with pytest.raises(NothingToRegenerateError, match="send a message first"):
        ChatSession().last_turn()


def test_a_turn_recorded_in_the_last_ones_place_replaces_it_and_adds_its_usage() -> None:
    session = answered(("one", "1"), ("two", "2"))
    session.record_turn("two", "2 again", USAGE, replacing_last=True)
    assert [m.content for m in session.messages] == ["one", "1", "two", "2 again"]
    assert session.token_usage.completion_tokens == 6  # the tokens were generated all the same


def test_a_refused_replacement_restores_the_old_turn() -> None:
    session = answered(("one", "1"))
    before = session.to_dict()
    with (
        pytest.raises(RuntimeError, match="store refused"),
        session.recording_turn("one", "new", USAGE, replacing_last=True),
    ):
        raise RuntimeError("store refused")
    assert session.to_dict() == before


def test_update_changes_everything_asked_or_nothing() -> None:
    session = ChatSession("old", system_prompt="be brief", metadata={"a": 1})
    session.update(title="new", metadata={"b": 2})
    assert (session.title, session.system_prompt, session.metadata) == ("new", "be brief", {"b": 2})
    session.update(system_prompt="")  # "" removes it
    assert session.system_prompt is None
    with pytest.raises(InvalidMessageError, match="NUL"):
        session.update(title="fine", system_prompt="bad\x00")
    assert session.title == "new"  # the good field was not applied either


# -- the service ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_regenerating_answers_the_last_question_again_without_the_old_answer() -> None:
    llm = FakeLLM(["first", "second"])
    async with InferenceService(llm=llm) as service:
        session = await service.create_session(system_prompt="sys")
        await service.generate_response(session.id, "question")
        response = await service.regenerate_response(session.id)
        stored = await service.get_session(session.id)
    assert response.content == "second"
    assert [m.content for m in stored.messages] == ["question", "second"]
    assert stored.messages[1].id == response.message_id
    # The model saw the conversation up to the question, not the answer it replaces.
    assert llm.messages_seen[-1] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "question"},
    ]


@pytest.mark.asyncio
async def test_a_stopped_or_failed_regeneration_keeps_the_old_answer() -> None:
    llm = FakeLLM(["first answer", "a much longer second answer"])
    async with InferenceService(llm=llm) as service:
        session = await service.create_session()
        await service.generate_response(session.id, "question")
        stream = service.stream_regenerated_response(session.id)
        assert (await anext(stream)).text == "a"
        await stream.aclose()  # Stop: the client went away
        llm.fail_with = InferenceError("boom")
        with pytest.raises(InferenceError):
            await service.regenerate_response(session.id)
        stored = await service.get_session(session.id)
    assert [m.content for m in stored.messages] == ["question", "first answer"]


@pytest.mark.asyncio
async def test_a_session_without_an_answer_has_nothing_to_regenerate() -> None:
    async with InferenceService(llm=FakeLLM()) as service:
        session = await service.create_session()
        with pytest.raises(NothingToRegenerateError):
            await service.regenerate_response(session.id)
        with pytest.raises(SessionNotFoundError):
            await service.regenerate_response("nope")


@pytest.mark.asyncio
async def test_an_update_waits_for_the_turn_under_way_and_loses_nothing() -> None:
    llm = FakeLLM(["the answer"], delay=0.2)
    async with InferenceService(llm=llm) as service:
        session = await service.create_session("old")
        turn = asyncio.create_task(service.generate_response(session.id, "question"))
        await asyncio.sleep(0.05)  # the turn holds the session
        updated = await service.update_session(session.id, title="new", system_prompt="sys")
        assert turn.done()  # the rename waited for it
        await turn
        stored = await service.get_session(session.id)
    assert updated.title == stored.title == "new"
    assert stored.system_prompt == "sys"
    assert [m.content for m in stored.messages] == ["question", "the answer"]


@pytest.mark.asyncio
async def test_updating_an_unknown_session_is_not_found() -> None:
    async with InferenceService(llm=FakeLLM()) as service:
        with pytest.raises(SessionNotFoundError):
            await service.update_session("nope", title="x")
