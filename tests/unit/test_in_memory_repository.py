"""The in-memory session repository."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gemma_chat.domain.errors import SessionNotFoundError
from gemma_chat.domain.interfaces import SessionRepository
from gemma_chat.domain.models import ChatSession
from gemma_chat.infrastructure.repositories import InMemorySessionRepository


def session_at(day: int, title: str = "chat") -> ChatSession:
    return ChatSession(title, created_at=datetime(2024, 1, day, tzinfo=UTC))


def test_it_implements_the_repository_port() -> None:
    assert isinstance(InMemorySessionRepository(), SessionRepository)


@pytest.mark.asyncio
async def test_an_added_session_can_be_got_back_by_id() -> None:
    repository = InMemorySessionRepository()
    session = ChatSession("hello")
    await repository.add(session)
    assert await repository.get(session.id) is session
    assert await repository.contains(session.id)


@pytest.mark.asyncio
async def test_an_unknown_id_is_not_contained() -> None:
    assert not await InMemorySessionRepository().contains("nope")


@pytest.mark.asyncio
async def test_getting_an_unknown_id_raises_session_not_found() -> None:
    with pytest.raises(SessionNotFoundError, match="'nope'") as info:
        await InMemorySessionRepository().get("nope")
    assert info.value.session_id == "nope"
    assert info.value.__cause__ is None


@pytest.mark.asyncio
async def test_list_returns_every_session_oldest_first() -> None:
    repository = InMemorySessionRepository()
    newest, oldest, middle = session_at(3, "c"), session_at(1, "a"), session_at(2, "b")
    for session in (newest, oldest, middle):
        await repository.add(session)
    assert [s.title for s in await repository.list()] == ["a", "b", "c"]


@pytest.mark.asyncio
async def test_an_empty_repository_lists_nothing() -> None:
    assert await InMemorySessionRepository().list() == []


@pytest.mark.asyncio
async def test_save_stores_the_new_state_of_a_session() -> None:
    repository = InMemorySessionRepository()
    session = ChatSession(id="fixed")
    await repository.add(session)
    replacement = ChatSession("renamed", id="fixed")
    replacement.add_user_message("hi")
    await repository.save(replacement)
    stored = await repository.get("fixed")
    assert stored.title == "renamed"
    assert stored.message_count == 1
    assert len(await repository.list()) == 1


@pytest.mark.asyncio
async def test_save_of_a_new_session_adds_it() -> None:
    repository = InMemorySessionRepository()
    session = ChatSession()
    await repository.save(session)
    assert await repository.get(session.id) is session


@pytest.mark.asyncio
async def test_delete_removes_only_that_session() -> None:
    repository = InMemorySessionRepository()
    kept, gone = ChatSession("kept"), ChatSession("gone")
    await repository.add(kept)
    await repository.add(gone)
    await repository.delete(gone.id)
    assert not await repository.contains(gone.id)
    assert await repository.list() == [kept]
    with pytest.raises(SessionNotFoundError):
        await repository.get(gone.id)


@pytest.mark.asyncio
async def test_deleting_an_unknown_id_raises_session_not_found() -> None:
    repository = InMemorySessionRepository()
    session = ChatSession()
    await repository.add(session)
    await repository.delete(session.id)
    with pytest.raises(SessionNotFoundError):
        await repository.delete(session.id)


@pytest.mark.asyncio
async def test_repositories_do_not_share_sessions() -> None:
    first, second = InMemorySessionRepository(), InMemorySessionRepository()
    session = ChatSession()
    await first.add(session)
    assert not await second.contains(session.id)
