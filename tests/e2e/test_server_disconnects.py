"""A client that goes away cancels its generation, streamed or not (issue 14, finding 3), on a
real uvicorn server with the server's own connection settings."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from gemma_chat import InferenceService, get_settings
from gemma_chat.server import create_app
from gemma_chat.testing import FakeLLM
from tests.e2e.servers import threaded_server

# FakeLLM sleeps `delay` before its whole answer, or before each streamed word: 10 s (or more)
# unless cancelled. A stream's first word is awaited before the response starts, so a client
# hanging up at 0.5 s is seen while the request waits for it.
SLOW_ANSWER = "slow answer"


@pytest.fixture
def slow() -> Iterator[tuple[str, FakeLLM, InferenceService]]:
    settings = get_settings(storage={"url": "memory://"})
    llm = FakeLLM([SLOW_ANSWER], model_name="slow", delay=10)
    service = InferenceService(settings, llm=llm)
    with threaded_server(create_app(settings, service)) as url:
        yield url, llm, service


def post_then_hang_up(url: str, path: str, body: dict[str, object]) -> None:
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload
        )
        time.sleep(0.5)  # the generation is under way


def wait_for(condition: object, seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.02)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stream": True}),
        ("/v1/completions", {"prompt": "hi", "max_tokens": 2000}),
    ],
    ids=["chat", "chat-stream", "completion"],
)
def test_a_request_whose_client_hangs_up_stops_generating(
    slow: tuple[str, FakeLLM, InferenceService], path: str, body: dict[str, object]
) -> None:
    url, _, service = slow
    post_then_hang_up(url, path, body)
    started = time.monotonic()
    wait_for(lambda: service.statistics()["cancelled_count"] == 1)
    assert time.monotonic() - started < 3  # not the 10 s the answer would take
    assert service.statistics()["request_count"] == 0  # nothing counted as answered
    metrics = httpx.get(f"{url}/metrics").text
    assert "gemma_requests_cancelled_total 1.0" in metrics
    # The place among the requests in flight was given back.
    assert httpx.get(f"{url}/health").json()["status"] == "healthy"


def test_a_session_turn_whose_client_hangs_up_leaves_the_session_unchanged(
    slow: tuple[str, FakeLLM, InferenceService],
) -> None:
    url, _, service = slow
    session_id = httpx.post(f"{url}/v1/sessions", json={}).json()["id"]
    post_then_hang_up(url, f"/v1/sessions/{session_id}/messages", {"content": "hi"})
    wait_for(lambda: service.statistics()["cancelled_count"] == 1)
    assert httpx.get(f"{url}/v1/sessions/{session_id}").json()["message_count"] == 0
