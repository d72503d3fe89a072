"""Sessions in SQLite: WAL mode, a schema version with migrations, one transaction per save.

A completed turn is saved in one transaction (its messages, the token usage, the metadata
together), so a crash leaves every completed turn and no half-written one. sqlite3 runs on one
worker thread, off the event loop.

Several processes may share a database: each session row has a version, and a save is a
compare-and-swap on it. A session is saved only if the stored version is still the one it was
read at (``ChatSession.version``); otherwise ``SessionConflictError``, and nothing is written,
so one process never overwrites turns another one saved.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from gemma_chat.domain.errors import SessionConflictError, SessionNotFoundError
from gemma_chat.domain.models import ChatSession

__all__ = ["SCHEMA_VERSION", "SQLiteSessionRepository"]

T = TypeVar("T")

# Each entry migrates the schema from its index to the next version.
_MIGRATIONS = [
    """
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL,
        system_prompt TEXT,
        metadata TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL
    );
    CREATE TABLE messages (
        session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        id TEXT NOT NULL,
        role TEXT NOT NULL,
        content TEXT NOT NULL,
        created_at TEXT NOT NULL,
        token_count INTEGER,
        PRIMARY KEY (session_id, position)
    );
    """,
    # 2: the version a save compares and swaps (rows written before count as version 1)
    "ALTER TABLE sessions ADD COLUMN version INTEGER NOT NULL DEFAULT 1",
    # 3: an assistant message's tool calls (OpenAI's JSON), the call a tool message answers
    """
    ALTER TABLE messages ADD COLUMN tool_calls TEXT;
    ALTER TABLE messages ADD COLUMN tool_call_id TEXT
    """,
]
SCHEMA_VERSION = len(_MIGRATIONS)


class SQLiteSessionRepository:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gemma-sqlite")
        self._connection: sqlite3.Connection | None = None

    # -- plumbing --------------------------------------------------------------------------------

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            return work(self._connect())

        return await asyncio.get_running_loop().run_in_executor(self._worker, call)

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")  # a committed turn survives power loss
            connection.execute("PRAGMA foreign_keys=ON")
            _migrate(connection)
            self._connection = connection
        return self._connection

    async def close(self) -> None:
        def close() -> None:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

        await asyncio.get_running_loop().run_in_executor(self._worker, close)
        self._worker.shutdown(wait=True)

    # -- SessionRepository -----------------------------------------------------------------------

    async def add(self, session: ChatSession) -> None:
        await self._store(session, adding=True)

    async def save(self, session: ChatSession) -> None:
        await self._store(session, adding=False)

    async def _store(self, session: ChatSession, *, adding: bool) -> None:
        data, version = session.to_dict(), session.version
        session.version = await self._run(lambda db: _write(db, data, version, adding=adding))

    async def get(self, session_id: str) -> ChatSession:
        stored = await self._run(lambda db: _read(db, session_id))
        if stored is None:
            raise SessionNotFoundError(session_id)
        return _session(stored)

    async def list(self) -> list[ChatSession]:
        ids = await self._run(
            lambda db: [row[0] for row in db.execute("SELECT id FROM sessions ORDER BY created_at")]
        )
        sessions = []
        for session_id in ids:
            stored = await self._run(lambda db, i=session_id: _read(db, i))  # type: ignore[misc]
            if stored is not None:
                sessions.append(_session(stored))
        return sessions

    async def delete(self, session_id: str) -> None:
        deleted = await self._run(
            lambda db: db.execute("DELETE FROM sessions WHERE id = ?", (session_id,)).rowcount
        )
        if not deleted:
            raise SessionNotFoundError(session_id)

    async def contains(self, session_id: str) -> bool:
        found = await self._run(
            lambda db: db.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)).fetchone()
        )
        return found is not None


def _migrate(db: sqlite3.Connection) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"The session database was written by a newer gemma-chat (schema {version}, this "
            f"one knows up to {SCHEMA_VERSION}): upgrade gemma-chat."
        )
    for target in range(version, SCHEMA_VERSION):
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _MIGRATIONS[target].split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {target + 1}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


def _session(stored: tuple[dict[str, Any], int]) -> ChatSession:
    data, version = stored
    session = ChatSession.from_dict(data)
    session.version = version
    return session


def _write(db: sqlite3.Connection, data: dict[str, Any], version: int, *, adding: bool) -> int:
    """The whole session in one transaction: all of a turn, or none of it; its new version.

    ``version`` is the one the session was read at (0: never stored, written whatever is
    there); the write happens only if the row still has it. ``adding``: a session new to this
    database is written whatever its version.
    """
    usage = data["token_usage"]
    db.execute("BEGIN IMMEDIATE")  # the write lock: no other process saves between check and write
    try:
        row = db.execute("SELECT version FROM sessions WHERE id = ?", (data["id"],)).fetchone()
        stored = 0 if row is None else int(row[0])
        if version and not (adding and row is None):
            if row is None:
                raise SessionNotFoundError(data["id"])  # deleted since it was read
            if stored != version:
                raise SessionConflictError(data["id"], version=version, stored_version=stored)
        db.execute(
            """
            INSERT INTO sessions (id, title, system_prompt, metadata, created_at, updated_at,
                                  prompt_tokens, completion_tokens, version)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT(id) DO UPDATE SET
                title = excluded.title, system_prompt = excluded.system_prompt,
                metadata = excluded.metadata, updated_at = excluded.updated_at,
                prompt_tokens = excluded.prompt_tokens,
                completion_tokens = excluded.completion_tokens, version = excluded.version
            """,
            (
                data["id"],
                data["title"],
                data["system_prompt"],
                json.dumps(data["metadata"], ensure_ascii=False),
                data["created_at"],
                data["updated_at"],
                usage["prompt_tokens"],
                usage["completion_tokens"],
                stored + 1,
            ),
        )
        messages = data["messages"]
        db.executemany(
            """
            INSERT INTO messages (session_id, position, id, role, content, created_at, token_count,
                                  tool_calls, tool_call_id)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT(session_id, position) DO UPDATE SET
                id = excluded.id, role = excluded.role, content = excluded.content,
                created_at = excluded.created_at, token_count = excluded.token_count,
                tool_calls = excluded.tool_calls, tool_call_id = excluded.tool_call_id
            """,
            [
                (
                    data["id"],
                    i,
                    m["id"],
                    m["role"],
                    m["content"],
                    m["created_at"],
                    m["token_count"],
                    json.dumps(m["tool_calls"], ensure_ascii=False) if "tool_calls" in m else None,
                    m.get("tool_call_id"),
                )
                for i, m in enumerate(messages)
            ],
        )
        db.execute(
            "DELETE FROM messages WHERE session_id = ? AND position >= ?",
            (data["id"], len(messages)),
        )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return stored + 1


def _read(db: sqlite3.Connection, session_id: str) -> tuple[dict[str, Any], int] | None:
    """A stored session and its version, read in one transaction (one consistent state)."""
    db.execute("BEGIN")
    try:
        row = db.execute(
            "SELECT id, title, system_prompt, metadata, created_at, updated_at, prompt_tokens, "
            "completion_tokens, version FROM sessions WHERE id = ?",
            (session_id,),
        ).fetchone()
        if row is None:
            return None
        messages = [
            {
                "id": m[0],
                "role": m[1],
                "content": m[2],
                "created_at": m[3],
                "token_count": m[4],
                **({"tool_calls": json.loads(m[5])} if m[5] is not None else {}),
                **({"tool_call_id": m[6]} if m[6] is not None else {}),
            }
            for m in db.execute(
                "SELECT id, role, content, created_at, token_count, tool_calls, tool_call_id "
                "FROM messages WHERE session_id = ? ORDER BY position",
                (session_id,),
            )
        ]
    finally:
        db.execute("COMMIT")
    data = {
        "id": row[0],
        "title": row[1],
        "system_prompt": row[2],
        "metadata": json.loads(row[3]),
        "created_at": row[4],
        "updated_at": row[5],
        "token_usage": {"prompt_tokens": row[6], "completion_tokens": row[7]},
        "messages": messages,
    }
    return data, int(row[8])
