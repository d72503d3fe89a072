"""Concurrent turns on one session: none is lost, in the library, over HTTP, and with two servers
sharing one SQLite database (issue 14, finding 1)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from gemma_chat import (
    ChatSession,
    InferenceService,
    SessionBusyError,
    SessionConflictError,
    get_settings,
)
from gemma_chat.server import create_app
from gemma_chat.testing import FakeLLM


def user_messages(session: ChatSession) -> list[str]:
    return [m.content for m in session.messages if m.role.value == "user"]


@pytest.mark.asyncio
@pytest.mark.parametrize("by_id", [True, False])
async def test_concurrent_turns_on_one_session_all_land_in_arrival_order(by_id: bool) -> None:
    llm = FakeLLM(["answer"], delay=0.001)
    async with InferenceService(get_settings(), llm=llm) as service:
        session = await service.create_session("shared")
        target: ChatSession | str = session.id if by_id else session
        questions = [f"question {i}" for i in range(20)]
        await asyncio.gather(*(service.generate_response(target, q) for q in questions))
        stored = await service.get_session(session.id)
    assert user_messages(stored) == questions
    assert stored.message_count == 40
    # each turn saw every turn before it
    assert [len(seen) for seen in llm.messages_seen] == [2 * i + 1 for i in range(20)]


@pytest.mark.asyncio
async def test_a_turn_on_a_busy_session_is_refused_when_set_to_reject() -> None:
    settings = get_settings(limits={"concurrent_turns": "reject"})
    async with InferenceService(settings, llm=FakeLLM(["a b c"], delay=0.05)) as service:
        session = await service.create_session()
        first = asyncio.create_task(service.generate_response(session.id, "one"))
        await asyncio.sleep(0.01)
        with pytest.raises(SessionBusyError, match="answering another message"):
            await service.generate_response(session.id, "two")
        await first
        await service.generate_response(session.id, "three")  # free again
        assert user_messages(await service.get_session(session.id)) == ["one", "three"]


@pytest.mark.asyncio
async def test_a_refused_save_leaves_the_callers_session_as_it_was(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sessions.db'}"
    settings = get_settings(storage={"url": url})
    async with (
        InferenceService(settings, llm=FakeLLM(["mine"])) as ours,
        InferenceService(settings, llm=FakeLLM(["theirs"])) as theirs,
    ):
        session = await ours.create_session()
        copy = await ours.get_session(session.id)  # read at the same version as `session`
        await theirs.generate_response(session.id, "their turn")
        with pytest.raises(SessionConflictError, match="read the session again"):
            await ours.generate_response(copy, "my turn")
        assert copy.message_count == 0  # not half-written: the turn was taken back
        assert user_messages(await ours.get_session(session.id)) == ["their turn"]


def _app(settings: Any, answer: str) -> Any:
    return create_app(settings, InferenceService(settings, llm=FakeLLM([answer], delay=0.002)))


async def _ready(client: httpx.AsyncClient) -> None:
    for _ in range(500):
        if (await client.get("/health")).status_code == 200:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the server never became ready")


@pytest.mark.asyncio
async def test_concurrent_http_turns_on_one_session_are_all_kept(tmp_path: Path) -> None:
    # SQLite, the server's default store: each read is a copy of the stored session.
    url = f"sqlite:///{tmp_path / 'sessions.db'}"
    settings = get_settings(storage={"url": url}, server={"max_pending_requests": 64})
    app = _app(settings, "ok")
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        await _ready(client)
        session_id = (await client.post("/v1/sessions", json={})).json()["id"]

        async def send(i: int, stream: bool) -> int:
            body = {"content": f"message {i}", "stream": stream}
            reply = await client.post(f"/v1/sessions/{session_id}/messages", json=body)
            return reply.status_code

        statuses = await asyncio.gather(*(send(i, stream=i % 2 == 1) for i in range(100)))
        answered = statuses.count(200)
        assert set(statuses) <= {200, 429}
        assert answered >= 64
        detail = (await client.get(f"/v1/sessions/{session_id}")).json()
    assert detail["message_count"] == 2 * answered


@pytest.mark.asyncio
async def test_two_servers_on_one_database_never_overwrite_each_others_turns(
    tmp_path: Path,
) -> None:
    settings = get_settings(storage={"url": f"sqlite:///{tmp_path / 'sessions.db'}"})
    apps = [_app(settings, "from A"), _app(settings, "from B")]
    clients = [
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
        for app in apps
    ]
    async with (
        apps[0].router.lifespan_context(apps[0]),
        apps[1].router.lifespan_context(apps[1]),
        clients[0],
        clients[1],
    ):
        for client in clients:
            await _ready(client)
        session_id = (await clients[0].post("/v1/sessions", json={})).json()["id"]

        async def send(i: int) -> httpx.Response:
            body = {"content": f"message {i}"}
            return await clients[i % 2].post(f"/v1/sessions/{session_id}/messages", json=body)

        replies = await asyncio.gather(*(send(i) for i in range(30)))
        kept = [f"message {i}" for i, r in enumerate(replies) if r.status_code == 200]
        refused = [r for r in replies if r.status_code != 200]
        assert all(r.status_code == 409 for r in refused)
        assert all(r.json()["error"]["code"] == "session_conflict" for r in refused)
        messages = (await clients[1].get(f"/v1/sessions/{session_id}")).json()["messages"]
    # Every answered turn is stored, and nothing else: a refused one left no trace.
    assert sorted(m["content"] for m in messages if m["role"] == "user") == sorted(kept)
    assert len(messages) == 2 * len(kept)
    assert kept
