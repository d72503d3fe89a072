"""The in-memory session repository."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gemma_chat.domain.errors import SessionConflictError, SessionNotFoundError
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


@pytest.mark.asyncio
async def test_each_save_moves_the_version_on() -> None:
    repository = InMemorySessionRepository()
    session = ChatSession()
    assert session.version == 0
    await repository.add(session)
    assert session.version == 1
    await repository.save(session)
    assert (await repository.get(session.id)).version == 2


@pytest.mark.asyncio
async def test_a_copy_read_before_the_last_save_is_refused() -> None:
    repository = InMemorySessionRepository()
    session = ChatSession()
    await repository.add(session)
    stale = ChatSession.from_dict(session.to_dict())
    stale.version = session.version  # a copy of the state as it was read
    session.add_user_message("kept")
    await repository.save(session)
    stale.add_user_message("would overwrite")
    with pytest.raises(SessionConflictError) as info:
        await repository.save(stale)
    assert (info.value.version, info.value.stored_version) == (1, 2)
    stored = await repository.get(session.id)
    assert stored is session
    assert [m.content for m in stored.messages] == ["kept"]


@pytest.mark.asyncio
async def test_a_copy_of_a_deleted_session_is_not_saved_back_but_can_be_added() -> None:
    repository = InMemorySessionRepository()
    session = ChatSession()
    await repository.add(session)
    await repository.delete(session.id)
    with pytest.raises(SessionNotFoundError):
        await repository.save(session)
    assert not await repository.contains(session.id)
    await repository.add(session)
    assert await repository.get(session.id) is session
