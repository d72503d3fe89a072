"""Bad input, over HTTP: every case gets a specific 4xx in OpenAI's error shape, the session
is untouched and the service is healthy afterwards. The count is reported in DEVELOPMENT.md."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gemma_chat import (
    InferenceService,
    LLMProtocol,
    LLMRegistry,
    ModelNotFoundError,
    Settings,
    get_settings,
)
from gemma_chat.server import create_app
from gemma_chat.testing import FakeLLM

KEY = {"Authorization": "Bearer k"}
LIMITS = {
    "max_body_bytes": 20_000,
    "max_messages": 8,
    "max_message_chars": 2_000,
    "max_tokens": 64,
    "max_stop_sequences": 2,
}


def no_other_models(settings: Settings) -> LLMProtocol:
    raise ModelNotFoundError(settings.model.name)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    settings = get_settings(server={"api_key": "k"}, limits=LIMITS)
    llm = FakeLLM(["fine"], model_name="m", context_length=600)
    service = InferenceService(settings, llm=llm, registry=LLMRegistry(fallback=no_other_models))
    with TestClient(create_app(settings, service)) as test_client:
        deadline = time.monotonic() + 5
        while test_client.get("/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        yield test_client


def user(content: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}]}


def chat(**fields: Any) -> dict[str, Any]:
    return {**user("hello"), **fields}


CHAT_CASES: list[tuple[str, Any, int]] = [
    ("no messages field", {}, 422),
    ("messages empty", {"messages": []}, 422),
    ("messages not a list", {"messages": "hello"}, 422),
    ("message not an object", {"messages": ["hello"]}, 422),
    ("role missing", {"messages": [{"content": "hi"}]}, 422),
    ("unknown role", {"messages": [{"role": "wizard", "content": "hi"}]}, 422),
    ("tool role", {"messages": [{"role": "tool", "content": "hi"}]}, 400),
    ("content missing", {"messages": [{"role": "user"}]}, 400),
    ("content null", user(None), 400),
    ("content a number", user(42), 422),
    ("content a list", user(["a", "b"]), 422),
    ("content an object", user({"text": "hi"}), 422),
    ("content empty", user(""), 400),
    ("content only spaces", user("   "), 400),
    ("content with a NUL", user("hi\x00there"), 400),
    ("content with a bell", user("hi\x07"), 400),
    ("content with escape", user("\x1b[31mred"), 400),
    ("content over the character limit", user("x" * 2_001), 400),
    ("too many messages", {"messages": [{"role": "user", "content": "a"}] * 9}, 400),
    ("last message from the assistant", {"messages": [{"role": "assistant", "content": "a"}]}, 400),
    ("only a system message", {"messages": [{"role": "system", "content": "a"}]}, 400),
    (
        "a system message with a control character",
        {"messages": [{"role": "system", "content": "be\x0bnice"}, user("a")["messages"][0]]},
        400,
    ),
    (
        "history message over the limit",
        {"messages": [{"role": "user", "content": "y" * 2_001}, user("a")["messages"][0]]},
        400,
    ),
    ("temperature negative", chat(temperature=-0.1), 400),
    ("temperature too high", chat(temperature=2.5), 400),
    ("temperature a word", chat(temperature="hot"), 422),
    ("top_p zero", chat(top_p=0), 400),
    ("top_p over one", chat(top_p=1.5), 400),
    ("top_p negative", chat(top_p=-0.5), 400),
    ("max_tokens zero", chat(max_tokens=0), 400),
    ("max_tokens negative", chat(max_tokens=-5), 400),
    ("max_tokens over the limit", chat(max_tokens=65), 400),
    ("max_tokens huge", chat(max_tokens=10**12), 400),
    ("max_tokens a word", chat(max_tokens="ten"), 422),
    ("max_tokens fractional", chat(max_tokens=2.5), 422),
    ("max_completion_tokens zero", chat(max_completion_tokens=0), 400),
    ("too many stop sequences", chat(stop=["a", "b", "c"]), 400),
    ("an empty stop sequence", chat(stop=[""]), 400),
    ("stop a number", chat(stop=5), 422),
    ("seed negative", chat(seed=-1), 400),
    ("seed over 2**63", chat(seed=2**64), 400),
    ("seed a word", chat(seed="abc"), 422),
    ("n zero", chat(n=0), 400),
    ("n too many", chat(n=99), 400),
    ("stream not a boolean", chat(stream="perhaps"), 422),
    ("stream_options not an object", chat(stream=True, stream_options="yes"), 422),
    ("unknown model", chat(model="gpt-17"), 404),
    ("prompt beyond the context window", chat(max_tokens=64, **user("w " * 560)), 400),
    ("streamed with a bad temperature", chat(stream=True, temperature=9), 400),
    ("streamed beyond the context window", chat(stream=True, **user("w " * 560)), 400),
]


@pytest.mark.parametrize(("case", "body", "status"), CHAT_CASES, ids=[c[0] for c in CHAT_CASES])
def test_bad_chat_requests(client: TestClient, case: str, body: Any, status: int) -> None:
    response = client.post("/v1/chat/completions", json=body, headers=KEY)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"]
    assert "Traceback" not in response.text
    assert client.get("/health").json()["status"] == "healthy"


RAW_CASES: list[tuple[str, bytes, dict[str, str], int]] = [
    ("malformed JSON", b"{not json", {"content-type": "application/json"}, 422),
    ("truncated JSON", b'{"messages": [', {"content-type": "application/json"}, 422),
    ("JSON but an array", b"[1, 2]", {"content-type": "application/json"}, 422),
    ("JSON null", b"null", {"content-type": "application/json"}, 422),
    ("empty body", b"", {"content-type": "application/json"}, 422),
    (
        "invalid UTF-8",
        b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}',
        {"content-type": "application/json"},
        400,
    ),
    (
        "temperature NaN",
        b'{"messages": [{"role": "user", "content": "a"}], "temperature": NaN}',
        {"content-type": "application/json"},
        400,
    ),
    (
        "temperature Infinity",
        b'{"messages": [{"role": "user", "content": "a"}], "temperature": Infinity}',
        {"content-type": "application/json"},
        400,
    ),
    (
        "top_p minus Infinity",
        b'{"messages": [{"role": "user", "content": "a"}], "top_p": -Infinity}',
        {"content-type": "application/json"},
        400,
    ),
    ("form data", b"a=1&b=2", {"content-type": "application/x-www-form-urlencoded"}, 422),
    ("plain text", b"hello", {"content-type": "text/plain"}, 422),
    (
        "a body over the byte limit",
        b'{"x": "' + b"a" * 25_000 + b'"}',
        {"content-type": "application/json"},
        413,
    ),
]


@pytest.mark.parametrize(
    ("case", "raw", "headers", "status"), RAW_CASES, ids=[c[0] for c in RAW_CASES]
)
def test_malformed_bodies(
    client: TestClient, case: str, raw: bytes, headers: dict[str, str], status: int
) -> None:
    response = client.post("/v1/chat/completions", content=raw, headers={**KEY, **headers})
    assert response.status_code == status, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert client.get("/health").json()["status"] == "healthy"


OTHER_CASES: list[tuple[str, str, str, Any, dict[str, str], int]] = [
    ("no API key", "get", "/v1/models", None, {}, 401),
    ("wrong API key", "get", "/v1/models", None, {"Authorization": "Bearer nope"}, 401),
    ("wrong auth scheme", "get", "/v1/models", None, {"Authorization": "Basic k"}, 401),
    ("completion prompt missing", "post", "/v1/completions", {}, KEY, 422),
    ("completion prompt empty", "post", "/v1/completions", {"prompt": ""}, KEY, 400),
    ("completion prompt a number", "post", "/v1/completions", {"prompt": 3}, KEY, 422),
    ("completion two prompts", "post", "/v1/completions", {"prompt": ["a", "b"]}, KEY, 400),
    ("completion prompt too long", "post", "/v1/completions", {"prompt": "z" * 2_001}, KEY, 400),
    ("completion n too many", "post", "/v1/completions", {"prompt": "a", "n": 99}, KEY, 400),
    ("unknown session", "get", "/v1/sessions/none", None, KEY, 404),
    ("delete unknown session", "delete", "/v1/sessions/none", None, KEY, 404),
    (
        "message to unknown session",
        "post",
        "/v1/sessions/none/messages",
        {"content": "a"},
        KEY,
        404,
    ),
    ("session with unknown field", "post", "/v1/sessions", {"name": "x"}, KEY, 400),
    ("session title a number", "post", "/v1/sessions", {"title": 5}, KEY, 422),
    ("session metadata a list", "post", "/v1/sessions", {"metadata": [1]}, KEY, 422),
    ("unknown route", "get", "/v1/nothing", None, KEY, 404),
    ("wrong method", "get", "/v1/chat/completions", None, KEY, 405),
]


@pytest.mark.parametrize(
    ("case", "method", "path", "body", "headers", "status"),
    OTHER_CASES,
    ids=[c[0] for c in OTHER_CASES],
)
def test_other_bad_requests(
    client: TestClient,
    case: str,
    method: str,
    path: str,
    body: Any,
    headers: dict[str, str],
    status: int,
) -> None:
    response = client.request(method.upper(), path, json=body, headers=headers)
    assert response.status_code == status, response.text
    assert "error" in response.json()
    assert client.get("/health").json()["status"] == "healthy"


SESSION_MESSAGE_CASES: list[tuple[str, Any, int]] = [
    ("empty content", {"content": ""}, 400),
    ("content with a NUL", {"content": "a\x00"}, 400),
    ("content over the limit", {"content": "q" * 2_001}, 400),
    ("content missing", {}, 422),
    ("unknown field", {"contents": "a"}, 422),
    ("bad temperature", {"content": "a", "temperature": -1}, 400),
    ("streamed bad temperature", {"content": "a", "temperature": -1, "stream": True}, 400),
    ("too many tokens", {"content": "a", "max_tokens": 1_000}, 400),
]


@pytest.mark.parametrize(
    ("case", "body", "status"), SESSION_MESSAGE_CASES, ids=[c[0] for c in SESSION_MESSAGE_CASES]
)
def test_bad_session_messages_leave_the_session_unchanged(
    client: TestClient, case: str, body: Any, status: int
) -> None:
    session_id = client.post("/v1/sessions", json={}, headers=KEY).json()["id"]
    response = client.post(f"/v1/sessions/{session_id}/messages", json=body, headers=KEY)
    assert response.status_code == status, response.text
    stored = client.get(f"/v1/sessions/{session_id}", headers=KEY).json()
    assert stored["messages"] == []
    assert stored["token_usage"]["total_tokens"] == 0
    ok = client.post(f"/v1/sessions/{session_id}/messages", json={"content": "a"}, headers=KEY)
    assert ok.status_code == 200


def test_the_suite_has_at_least_sixty_cases() -> None:
    total = len(CHAT_CASES) + len(RAW_CASES) + len(OTHER_CASES) + len(SESSION_MESSAGE_CASES)
    assert total >= 60
