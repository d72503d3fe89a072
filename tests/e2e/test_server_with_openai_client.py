"""The server on 127.0.0.1 with a real model, driven by the official openai client."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
from openai import AuthenticationError, BadRequestError, OpenAI

from gemma_chat import get_settings
from gemma_chat.server import create_app
from gemma_chat.testing.tiny_gemma import build_tiny_gemma
from tests.e2e.servers import threaded_server

API_KEY = "test-key"


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    model = build_tiny_gemma(tmp_path_factory.mktemp("server-model"))
    settings = get_settings(
        model={"name": str(model), "max_new_tokens": 24, "context_length": 4096},
        server={"api_key": API_KEY},
        storage={"url": f"sqlite://{tmp_path_factory.mktemp('server-db') / 'sessions.db'}"},
        cache_dir=tmp_path_factory.mktemp("server-cache"),
    )
    with threaded_server(create_app(settings), timeout=120) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"{base_url}/v1", api_key=API_KEY, max_retries=0) as openai_client:
        yield openai_client


def test_the_openai_client_gets_a_chat_completion(client: OpenAI) -> None:
    model = client.models.list().data[0].id
    completion = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        temperature=0,
        max_tokens=8,
    )
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage is not None
    assert 0 < completion.usage.completion_tokens <= 8


def test_the_openai_client_streams_the_same_text(client: OpenAI) -> None:
    model = client.models.list().data[0].id
    messages = [{"role": "user", "content": "Tell me something"}]
    whole = client.chat.completions.create(
        model=model, messages=messages, temperature=0, max_tokens=12  # type: ignore[arg-type]
    )
    stream = client.chat.completions.create(
        model=model,
        messages=messages,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]


def test_errors_reach_the_client_as_openai_errors(client: OpenAI, base_url: str) -> None:
    model = client.models.list().data[0].id
    with pytest.raises(BadRequestError, match="n=99"):
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hi"}], n=99
        )
    with pytest.raises(BadRequestError, match="context window"):
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "word " * 5000}]
        )
    with (
        OpenAI(base_url=f"{base_url}/v1", api_key="wrong", max_retries=0) as wrong,
        pytest.raises(AuthenticationError),
    ):
        wrong.models.list()
    assert httpx.get(f"{base_url}/health").json()["status"] == "healthy"


def test_a_client_that_disconnects_stops_its_generation(base_url: str) -> None:
    body = {
        "messages": [{"role": "user", "content": "Go on forever"}],
        "max_tokens": 3000,
        "temperature": 0.9,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {API_KEY}"}
    before = httpx.get(f"{base_url}/health").json()["model_info"]["scheduler"]["decoded_tokens"]
    with httpx.stream(
        "POST", f"{base_url}/v1/chat/completions", json=body, headers=headers, timeout=30
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and '"content"' in line:
                break  # leave after the first piece of text
    deadline = time.monotonic() + 3
    while True:
        scheduler = httpx.get(f"{base_url}/health").json()["model_info"]["scheduler"]
        if scheduler["active"] == 0:
            break
        assert time.monotonic() < deadline, json.dumps(scheduler)
        time.sleep(0.05)
    # Far fewer than the 3,000 tokens asked for were generated.
    assert scheduler["decoded_tokens"] - before < 1500


def test_a_session_over_http_keeps_its_history_and_its_kv_cache(base_url: str) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}

    def reused() -> int:
        health = httpx.get(f"{base_url}/health").json()
        tokens: int = health["model_info"]["scheduler"]["reused_tokens"]
        return tokens

    session = httpx.post(
        f"{base_url}/v1/sessions", json={"system_prompt": "Be brief."}, headers=headers
    ).json()
    url = f"{base_url}/v1/sessions/{session['id']}/messages"
    first = httpx.post(url, json={"content": "Hello", "temperature": 0}, headers=headers).json()
    before = reused()
    second = httpx.post(url, json={"content": "And?", "temperature": 0}, headers=headers).json()
    assert reused() - before >= first["usage"]["prompt_tokens"] - 1
    assert second["usage"]["prompt_tokens"] > first["usage"]["prompt_tokens"]
    detail = httpx.get(f"{base_url}/v1/sessions/{session['id']}", headers=headers).json()
    assert [m["content"] for m in detail["messages"][::2]] == ["Hello", "And?"]


def test_the_openai_client_gets_a_raw_completion(client: OpenAI) -> None:
    model = client.models.list().data[0].id
    completion = client.completions.create(
        model=model, prompt="Once upon a time", max_tokens=6, temperature=0
    )
    assert completion.object == "text_completion"
    assert completion.usage is not None
    assert 0 < completion.usage.completion_tokens <= 6
    streamed = client.completions.create(
        model=model, prompt="Once upon a time", max_tokens=6, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == completion.choices[0].text


def test_unknown_sessions_404_and_metrics_move_over_http(client: OpenAI, base_url: str) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    missing = httpx.get(f"{base_url}/v1/sessions/nope", headers=headers)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "session_not_found"

    def tokens_generated() -> float:
        for line in httpx.get(f"{base_url}/metrics").text.splitlines():
            if line.startswith("gemma_tokens_generated_total"):
                return float(line.split()[-1])
        return 0.0

    before = tokens_generated()
    model = client.models.list().data[0].id
    client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0.5
    )
    assert tokens_generated() > before
    assert (
        'gemma_requests_total{route="/v1/chat/completions",status="200"}'
        in httpx.get(f"{base_url}/metrics").text
    )
