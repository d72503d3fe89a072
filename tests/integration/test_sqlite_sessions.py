"""Sessions in SQLite: lossless round trips, one transaction per save, migrations, the service."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from gemma_chat import (
    ChatSession,
    ConfigurationError,
    InferenceService,
    SessionNotFoundError,
    TokenUsage,
    get_settings,
)
from gemma_chat.infrastructure.repositories import (
    InMemorySessionRepository,
    SQLiteSessionRepository,
    create_session_repository,
)
from gemma_chat.infrastructure.repositories.sqlite import SCHEMA_VERSION
from gemma_chat.testing import FakeLLM


def a_session() -> ChatSession:
    session = ChatSession("Support ✓", system_prompt="Be kind.", metadata={"user": {"id": 7}})
    session.record_turn("Hello 🙂", "Hi! How can I help?", TokenUsage(12, 6), user_token_count=3)
    session.record_turn("second", "", TokenUsage(20, 0))
    return session


@pytest.mark.asyncio
async def test_a_saved_session_reads_back_equal_from_a_new_connection(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    first = SQLiteSessionRepository(path)
    session = a_session()
    await first.add(session)
    await first.close()
    second = SQLiteSessionRepository(path)
    assert (await second.get(session.id)).to_dict() == session.to_dict()
    assert await second.contains(session.id)
    assert [s.id for s in await second.list()] == [session.id]
    await second.delete(session.id)
    with pytest.raises(SessionNotFoundError):
        await second.get(session.id)
    with pytest.raises(SessionNotFoundError):
        await second.delete(session.id)
    assert not await second.contains(session.id)
    await second.close()


@pytest.mark.asyncio
async def test_saving_a_cleared_session_removes_its_messages(tmp_path: Path) -> None:
    repository = SQLiteSessionRepository(tmp_path / "s.db")
    session = a_session()
    await repository.save(session)
    session.clear()
    session.record_turn("fresh start", "ok", TokenUsage(1, 1))
    await repository.save(session)
    stored = await repository.get(session.id)
    assert [m.content for m in stored.messages] == ["fresh start", "ok"]
    assert stored.token_usage == TokenUsage(1, 1)
    await repository.close()


@pytest.mark.asyncio
async def test_a_failed_save_leaves_the_last_saved_state(tmp_path: Path) -> None:
    repository = SQLiteSessionRepository(tmp_path / "s.db")
    session = a_session()
    await repository.save(session)
    session.record_turn("third", "answer", TokenUsage(1, 1))
    session.metadata["unstorable"] = object()
    with pytest.raises(TypeError):
        await repository.save(session)
    assert len((await repository.get(session.id)).messages) == 4
    await repository.close()


@pytest.mark.asyncio
async def test_the_database_uses_wal_and_records_its_schema_version(tmp_path: Path) -> None:
    repository = SQLiteSessionRepository(tmp_path / "s.db")
    await repository.save(a_session())
    await repository.close()
    db = sqlite3.connect(tmp_path / "s.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    newer = SQLiteSessionRepository(tmp_path / "s.db")
    with pytest.raises(RuntimeError, match="newer gemma-chat"):
        await newer.get("x")
    await newer.close()


def test_storage_urls_choose_the_repository(tmp_path: Path) -> None:
    assert isinstance(create_session_repository(None), InMemorySessionRepository)
    assert isinstance(create_session_repository("memory://"), InMemorySessionRepository)
    sqlite = create_session_repository(f"sqlite://{tmp_path}/x.db")
    assert isinstance(sqlite, SQLiteSessionRepository)
    assert sqlite.path == tmp_path / "x.db"
    for bad in ("sqlite://", "postgres://db"):
        with pytest.raises(ConfigurationError, match="GEMMA_STORAGE__URL"):
            create_session_repository(bad)


@pytest.mark.asyncio
async def test_the_service_persists_completed_turns_only(tmp_path: Path) -> None:
    settings = get_settings(storage={"url": f"sqlite://{tmp_path}/s.db"})
    llm = FakeLLM(["first answer", "second answer"])
    async with InferenceService(settings, llm=llm) as service:
        session = await service.create_session("t", system_prompt="Be kind.")
        await service.generate_response(session.id, "one")
        llm.fail_with = RuntimeError("boom")
        with pytest.raises(Exception, match="boom"):
            await service.generate_response(session.id, "two")
    async with InferenceService(settings, llm=FakeLLM()) as again:
        stored = await again.get_session(session.id)
    assert [m.content for m in stored.messages] == ["one", "first answer"]
    assert stored.system_prompt == "Be kind."


@pytest.mark.asyncio
async def test_two_turns_on_one_stored_session_run_in_order(tmp_path: Path) -> None:
    settings = get_settings(storage={"url": f"sqlite://{tmp_path}/s.db"})
    llm = FakeLLM(["a", "b"], delay=0.02)
    async with InferenceService(settings, llm=llm) as service:
        session = await service.create_session()
        await asyncio.gather(
            service.generate_response(session.id, "one"),
            service.generate_response(session.id, "two"),
        )
        stored = await service.get_session(session.id)
    assert [m.role.value for m in stored.messages] == ["user", "assistant"] * 2
    assert len(llm.messages_seen[1]) == 3  # the second turn saw the first one
