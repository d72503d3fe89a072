"""Sessions in SQLite: lossless round trips, one transaction per save, migrations, the service."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
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
from gemma_chat.domain.errors import SessionConflictError
from gemma_chat.infrastructure.repositories import (
    InMemorySessionRepository,
    SQLiteSessionRepository,
    create_session_repository,
)
from gemma_chat.infrastructure.repositories.sqlite import _MIGRATIONS, SCHEMA_VERSION
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


@pytest.mark.asyncio
async def test_two_writers_on_one_database_cannot_overwrite_each_others_turns(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    first, second = SQLiteSessionRepository(path), SQLiteSessionRepository(path)
    session = a_session()
    await first.add(session)
    mine, theirs = await first.get(session.id), await second.get(session.id)
    assert mine.version == theirs.version == session.version == 1
    mine.record_turn("from the first", "one", TokenUsage(1, 1))
    theirs.record_turn("from the second", "two", TokenUsage(1, 1))
    await first.save(mine)
    assert mine.version == 2
    with pytest.raises(SessionConflictError, match="read the session again") as info:
        await second.save(theirs)
    assert (info.value.session_id, info.value.version, info.value.stored_version) == (
        session.id,
        1,
        2,
    )
    stored = await second.get(session.id)
    assert [m.content for m in stored.messages][-2:] == ["from the first", "one"]
    # Read again, the second writer's turn goes after the first one's.
    stored.record_turn("from the second", "two", TokenUsage(1, 1))
    await second.save(stored)
    contents = [m.content for m in (await first.get(session.id)).messages]
    assert contents[-4:] == ["from the first", "one", "from the second", "two"]
    assert stored.token_usage == session.token_usage + TokenUsage(2, 2)
    await first.close()
    await second.close()


@pytest.mark.asyncio
async def test_a_session_deleted_by_another_writer_is_not_saved_back(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    first, second = SQLiteSessionRepository(path), SQLiteSessionRepository(path)
    session = a_session()
    await first.add(session)
    copy = await second.get(session.id)
    await first.delete(session.id)
    with pytest.raises(SessionNotFoundError):
        await second.save(copy)
    assert not await first.contains(session.id)
    await second.add(copy)  # adding it anew is explicit
    assert await first.contains(session.id)
    await first.close()
    await second.close()


@pytest.mark.asyncio
async def test_a_database_of_schema_1_is_migrated_with_its_sessions(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(_MIGRATIONS[0])
    old.execute(
        "INSERT INTO sessions VALUES ('old', 'Old', NULL, '{}', '2024-01-01T00:00:00+00:00', "
        "'2024-01-01T00:00:00+00:00', 3, 4)"
    )
    old.execute(
        "INSERT INTO messages VALUES ('old', 0, 'm1', 'user', 'hi', '2024-01-01T00:00:00+00:00', 1)"
    )
    old.execute("PRAGMA user_version = 1")
    old.commit()
    old.close()
    repository = SQLiteSessionRepository(path)
    session = await repository.get("old")
    assert session.version == 1
    assert [m.content for m in session.messages] == ["hi"]
    assert session.token_usage == TokenUsage(3, 4)
    session.record_turn("again", "yes", TokenUsage(1, 1))
    await repository.save(session)
    assert session.version == 2
    assert (await repository.get("old")).message_count == 3
    await repository.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    db.close()


# Records turns on one stored session, each read, changed and saved again until it is saved.
TURN_WRITER = """
import asyncio, sys, time
from pathlib import Path
from gemma_chat.domain.errors import SessionConflictError
from gemma_chat.domain.models import TokenUsage
from gemma_chat.infrastructure.repositories import SQLiteSessionRepository

async def main(path, session_id, name, turns):
    repository = SQLiteSessionRepository(path)
    conflicts = 0
    for turn in range(turns):
        while True:
            session = await repository.get(session_id)
            await asyncio.sleep(0.001)  # the other process reads meanwhile
            session.record_turn(f"{name}-{turn}", "ok", TokenUsage(1, 1))
            try:
                await repository.save(session)
                break
            except SessionConflictError:
                conflicts += 1
    await repository.close()
    print(conflicts)

path, session_id, name, turns = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
Path(f"{path}.ready-{name}").touch()  # both processes start writing together
deadline = time.monotonic() + 60
while len(list(Path(path).parent.glob("*.ready-*"))) < 2 and time.monotonic() < deadline:
    time.sleep(0.01)
asyncio.run(main(path, session_id, name, turns))
"""


def test_two_processes_recording_turns_on_one_session_keep_every_turn(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    session = ChatSession("shared")

    async def add() -> None:
        repository = SQLiteSessionRepository(path)
        await repository.add(session)
        await repository.close()

    async def read() -> ChatSession:
        repository = SQLiteSessionRepository(path)
        try:
            return await repository.get(session.id)
        finally:
            await repository.close()

    asyncio.run(add())
    src = str(Path(sys.modules["gemma_chat"].__file__ or "").resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    turns = 30
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", TURN_WRITER, str(path), session.id, name, str(turns)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name in ("a", "b")
    ]
    for writer in writers:
        _, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err[-3000:]
    stored = asyncio.run(read())
    users = [m.content for m in stored.messages if m.role.value == "user"]
    assert sorted(users) == sorted(f"{n}-{t}" for n in "ab" for t in range(turns))
    assert stored.token_usage == TokenUsage(2 * turns, 2 * turns)
    assert stored.version == 1 + 2 * turns
