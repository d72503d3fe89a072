"""The OpenAI-compatible HTTP API on a FakeLLM: shapes, streaming, errors, auth, loading."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gemma_chat import (
    BackendOverloadedError,
    BackendUnavailableError,
    InferenceService,
    LLMProtocol,
    LLMRegistry,
    ModelNotFoundError,
    Settings,
    get_settings,
)
from gemma_chat.server import create_app
from gemma_chat.testing import FakeLLM


def wait_until_ready(client: TestClient) -> None:
    deadline = time.monotonic() + 5
    while client.get("/health").status_code != 200:
        assert time.monotonic() < deadline, "the service never became ready"
        time.sleep(0.01)


@pytest.fixture
def llm() -> FakeLLM:
    return FakeLLM(["Hello from the fake model"], model_name="fake-model")


def no_other_models(settings: Settings) -> LLMProtocol:
    raise ModelNotFoundError(settings.model.name)


def make_client(llm: FakeLLM, **server: Any) -> TestClient:
    settings = get_settings(server=server)
    service = InferenceService(settings, llm=llm, registry=LLMRegistry(fallback=no_other_models))
    return TestClient(create_app(settings, service))


@pytest.fixture
def client(llm: FakeLLM) -> Iterator[TestClient]:
    with make_client(llm) as test_client:
        wait_until_ready(test_client)
        yield test_client


CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "Hi"}]}


def test_a_chat_completion_has_openais_shape(client: TestClient, llm: FakeLLM) -> None:
    body = {
        **CHAT,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "answer"},
            {"role": "user", "content": "Hi"},
        ],
        "temperature": 0.2,
        "max_tokens": 3,
        "stop": "zzz",
    }
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    data = response.json()
    assert data["object"] == "chat.completion"
    assert data["id"].startswith("chatcmpl-")
    assert data["model"] == "fake-model"
    assert data["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hello from the",
        "refusal": None,
    }
    assert data["choices"][0]["finish_reason"] == "length"  # cut by max_tokens
    usage = data["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert llm.messages_seen[-1] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "answer"},
        {"role": "user", "content": "Hi"},
    ]
    assert llm.calls[-1].kwargs["max_new_tokens"] == 3
    assert llm.calls[-1].kwargs["stop"] == ["zzz"]


def sse_events(text: str) -> list[Any]:
    payloads = [
        line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")
    ]
    assert payloads[-1] == "[DONE]"
    return [json.loads(p) for p in payloads[:-1]]


def test_a_streamed_completion_follows_openais_chunk_rules(client: TestClient) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response.read().decode())
    assert len({e["id"] for e in events}) == 1
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    content = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert content == "Hello from the fake model"
    finals = [e for e in events if e["choices"] and e["choices"][0]["finish_reason"]]
    assert [f["choices"][0]["finish_reason"] for f in finals] == ["stop"]
    assert events[-1]["choices"] == []
    assert events[-1]["usage"]["completion_tokens"] > 0


def test_models_lists_the_served_model(client: TestClient) -> None:
    data = client.get("/v1/models").json()
    assert data["object"] == "list"
    assert [m["id"] for m in data["data"]] == ["fake-model"]


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({**CHAT, "n": 9}, 400, "n=9"),
        ({**CHAT, "frequency_penalty": 0.5}, 400, "frequency_penalty"),
        ({**CHAT, "functions": []}, 400, "Unsupported field"),
        ({**CHAT, "messages": []}, 422, "messages"),
        ({**CHAT, "messages": [{"role": "assistant", "content": "x"}]}, 400, "last message"),
        ({**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, 422, "messages"),
        ({**CHAT, "messages": [{"role": "user", "content": ""}]}, 400, "must not be empty"),
        ({**CHAT, "temperature": 5}, 400, "temperature"),
        ({**CHAT, "max_tokens": 0}, 400, "Invalid max_tokens=0"),  # the public name
        ({**CHAT, "model": "no-such-model"}, 404, "no-such-model"),
    ],
)
def test_bad_requests_get_specific_errors_in_openais_shape(
    client: TestClient, body: dict[str, Any], status: int, fragment: str
) -> None:
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert fragment in error["message"]
    assert "Traceback" not in error["message"]
    assert client.get("/health").json()["status"] == "healthy"


def test_malformed_json_is_a_422_not_a_crash(client: TestClient) -> None:
    response = client.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["message"] == (
        "The request body is not valid JSON: Expecting property name enclosed in double quotes "
        "at character 1."
    )
    assert error["param"] is None
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_every_v1_route_needs_the_api_key_when_one_is_set(llm: FakeLLM) -> None:
    with make_client(llm, api_key="s3cret") as client:
        wait_until_ready(client)
        assert client.get("/v1/models").status_code == 401
        wrong = client.post(
            "/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer x"}
        )
        assert wrong.status_code == 401
        assert wrong.json()["error"]["code"] == "invalid_api_key"
        good = {"Authorization": "Bearer s3cret"}
        assert client.get("/v1/models", headers=good).status_code == 200
        assert client.post("/v1/chat/completions", json=CHAT, headers=good).status_code == 200
        assert client.get("/health").status_code == 200  # health stays open


class SlowLoadingLLM(FakeLLM):
    async def _load_model_implementation(self) -> None:
        import asyncio

        await asyncio.sleep(0.3)


def test_while_the_model_loads_health_and_the_api_say_503() -> None:
    settings = get_settings()
    app = create_app(
        settings, InferenceService(settings, llm=SlowLoadingLLM(model_name="fake-model"))
    )
    with TestClient(app) as client:
        assert client.get("/health").status_code == 503
        busy = client.post("/v1/chat/completions", json=CHAT)
        assert busy.status_code == 503
        assert busy.headers["retry-after"] == "5"
        wait_until_ready(client)
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_a_failing_model_is_a_500_without_details(client: TestClient, llm: FakeLLM) -> None:
    llm.fail_with = RuntimeError("secret internal detail /etc/passwd")
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 500
    assert "secret" not in response.text
    assert "/etc" not in response.text


def test_sessions_keep_the_history_so_clients_send_only_the_new_message(
    client: TestClient, llm: FakeLLM
) -> None:
    created = client.post(
        "/v1/sessions", json={"title": "Support", "system_prompt": "Be kind.", "metadata": {"u": 1}}
    )
    assert created.status_code == 201
    session_id = created.json()["id"]
    first = client.post(f"/v1/sessions/{session_id}/messages", json={"content": "Hello"})
    assert first.status_code == 200
    assert first.json()["message"]["content"] == "Hello from the fake model"
    with client.stream(
        "POST", f"/v1/sessions/{session_id}/messages", json={"content": "More", "stream": True}
    ) as response:
        events = sse_events(response.read().decode())
    assert "".join(e["delta"]["content"] for e in events) == "Hello from the fake model"
    assert events[-1]["finish_reason"] == "stop"
    assert events[-1]["usage"]["completion_tokens"] > 0
    assert llm.messages_seen[-1][:3] == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hello from the fake model"},
    ]
    detail = client.get(f"/v1/sessions/{session_id}").json()
    assert [m["role"] for m in detail["messages"]] == ["user", "assistant"] * 2
    assert detail["messages"][1]["token_count"] > 0
    assert detail["metadata"] == {"u": 1}
    assert [s["id"] for s in client.get("/v1/sessions").json()["data"]] == [session_id]
    assert client.delete(f"/v1/sessions/{session_id}").json()["deleted"] is True
    assert client.get(f"/v1/sessions/{session_id}").status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("get", "/v1/sessions/nope", None),
        ("delete", "/v1/sessions/nope", None),
        ("post", "/v1/sessions/nope/messages", {"content": "hi"}),
        ("post", "/v1/sessions/nope/messages", {"content": "hi", "stream": True}),
    ],
)
def test_unknown_sessions_are_404(
    client: TestClient, method: str, path: str, body: dict[str, Any] | None
) -> None:
    response = client.request(method.upper(), path, json=body)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "session_not_found"


def test_a_bad_session_message_leaves_the_session_unchanged(client: TestClient) -> None:
    session_id = client.post("/v1/sessions", json={}).json()["id"]
    assert (
        client.post(f"/v1/sessions/{session_id}/messages", json={"content": ""}).status_code == 400
    )
    bad = client.post(
        f"/v1/sessions/{session_id}/messages", json={"content": "x", "temperature": 9}
    )
    assert bad.status_code == 400
    assert (
        client.post(f"/v1/sessions/{session_id}/messages", json={"contents": "x"}).status_code
        == 422
    )
    assert client.get(f"/v1/sessions/{session_id}").json()["messages"] == []


def metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_move_with_requests_tokens_and_time_to_first_token(client: TestClient) -> None:
    before = client.get("/metrics").text
    client.post("/v1/chat/completions", json=CHAT)
    client.post("/v1/chat/completions", json={**CHAT, "n": 9})
    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        r.read()
    after = client.get("/metrics").text
    route = "/v1/chat/completions"
    ok = metric(after, "gemma_requests_total", route=route, status="200")
    assert ok - metric(before, "gemma_requests_total", route=route, status="200") == 2
    assert metric(after, "gemma_requests_total", route=route, status="400") == 1
    assert metric(after, "gemma_tokens_generated_total") > metric(
        before, "gemma_tokens_generated_total"
    )
    assert metric(after, "gemma_time_to_first_token_seconds_count") == 1
    assert metric(after, "gemma_request_seconds_count", route=route) == 3
    assert "gemma_queue_depth" in after
    assert "gemma_active_batch_size" in after
    assert "gemma_cache_hits_total" in after


def test_a_raw_completion_continues_the_prompt_without_a_chat_format(
    client: TestClient, llm: FakeLLM
) -> None:
    response = client.post("/v1/completions", json={"prompt": "Once upon a time", "max_tokens": 2})
    assert response.status_code == 200
    data = response.json()
    assert data["object"] == "text_completion"
    assert data["choices"][0]["text"] == "Hello from"
    assert data["choices"][0]["finish_reason"] == "length"  # cut by max_tokens
    assert llm.calls[-1].prompt == "Once upon a time"  # as sent: no chat format
    assert llm.calls[-1].kwargs["raw"] is True
    body = {"prompt": "Once", "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/completions", json=body) as streamed:
        events = sse_events(streamed.read().decode())
    assert "".join(e["choices"][0]["text"] for e in events if e["choices"]) == (
        "Hello from the fake model"
    )
    assert events[-1]["usage"]["completion_tokens"] > 0
    assert client.post("/v1/completions", json={"prompt": ["a", "b"]}).status_code == 400
    assert client.post("/v1/completions", json={"prompt": ""}).status_code == 400


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {**CHAT, "stream": True, "temperature": 7}),
        (
            "/v1/chat/completions",
            {**CHAT, "stream": True, "messages": [{"role": "user", "content": " "}]},
        ),
        ("/v1/completions", {"prompt": "x", "stream": True, "top_p": 0}),
    ],
)
def test_a_bad_streamed_request_is_refused_before_the_stream_starts(
    client: TestClient, path: str, body: dict[str, Any]
) -> None:
    response = client.post(path, json=body)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    # ...and its place among the requests in flight was given back.
    assert client.app.state.gemma.pending == 0  # type: ignore[attr-defined]


def test_neither_the_api_key_nor_the_prompt_is_logged_at_info(
    llm: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    secret_prompt = "my secret medical question 4711"
    with caplog.at_level(logging.INFO), make_client(llm, api_key="key-0815") as client:
        wait_until_ready(client)
        headers = {"Authorization": "Bearer key-0815"}
        client.post("/v1/chat/completions", json=user_chat(secret_prompt), headers=headers)
        client.post("/v1/chat/completions", json=user_chat(secret_prompt))  # 401
        llm.fail_with = RuntimeError("boom")
        client.post("/v1/chat/completions", json=user_chat(secret_prompt), headers=headers)
    assert "key-0815" not in caplog.text
    assert secret_prompt not in caplog.text


def user_chat(content: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}]}


def test_cors_is_closed_unless_configured(llm: FakeLLM) -> None:
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    with make_client(llm) as closed:
        response = closed.options("/v1/chat/completions", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
    with make_client(llm, cors_origins=["https://app.example"]) as open_client:
        allowed = {**preflight, "Origin": "https://app.example"}
        response = open_client.options("/v1/chat/completions", headers=allowed)
        assert response.headers["access-control-allow-origin"] == "https://app.example"


# -- a remote model's server behind this one ---------------------------------------------------

INTERNAL = "http://10.0.0.5:8000/v1"


def test_a_remote_servers_overload_is_a_429_with_its_retry_after(
    client: TestClient, llm: FakeLLM
) -> None:
    llm.fail_with = BackendOverloadedError(
        f"The server at {INTERNAL} is overloaded", retry_after=2.2
    )
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "backend_overloaded")
    assert "10.0.0.5" not in response.text


def test_an_unreachable_remote_server_is_a_503_without_its_address(
    client: TestClient, llm: FakeLLM
) -> None:
    llm.fail_with = BackendUnavailableError(f"Could not reach the server at {INTERNAL}")
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["error"]["code"] == "backend_unavailable"
    assert "10.0.0.5" not in response.text


def test_a_remote_stream_that_breaks_ends_with_an_error_event_without_its_address(
    client: TestClient, llm: FakeLLM
) -> None:
    llm.fail_with = BackendUnavailableError(f"The connection to {INTERNAL} broke")
    llm.fail_after_chunks = 2
    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
        assert response.status_code == 200
        events = sse_events(response.read().decode())
    error = events[-1]["error"]
    assert (error["type"], error["code"]) == ("service_unavailable", "backend_unavailable")
    assert "10.0.0.5" not in json.dumps(events)


def test_top_k_and_repetition_penalty_reach_the_model_as_vllm_names_them(
    client: TestClient, llm: FakeLLM
) -> None:
    body = {**CHAT, "top_k": 5, "repetition_penalty": 1.3}
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    assert (llm.calls[-1].kwargs["top_k"], llm.calls[-1].kwargs["repetition_penalty"]) == (5, 1.3)
    response = client.post("/v1/chat/completions", json={**CHAT, "top_k": -1})
    assert response.status_code == 400
    assert "top_k" in response.json()["error"]["message"]
