"""Bad text, wrong types and model names over HTTP: a 4xx naming the field, nothing stored,
nothing read from the filesystem (issue 14, findings 4 and 7)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gemma_chat import InferenceService, LLMProtocol, LLMRegistry, Settings, get_settings
from gemma_chat.server import create_app
from gemma_chat.testing import FakeLLM

JSON = {"content-type": "application/json"}


def serve(settings: Settings, registry: LLMRegistry | None = None) -> TestClient:
    llm = FakeLLM(["ok"], model_name="served")
    service = InferenceService(settings, llm=llm, registry=registry)
    return TestClient(create_app(settings, service))


def ready(client: TestClient) -> TestClient:
    deadline = time.monotonic() + 5
    while client.get("/health").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return client


@pytest.fixture
def client() -> Iterator[TestClient]:
    with serve(get_settings(storage={"url": "memory://"})) as test_client:
        yield ready(test_client)


# Raw bytes: a JSON "\ud800" escape decodes to a lone surrogate, which json= cannot send.
@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/sessions", b'{"title": "a\\ud800"}', "title"),
        ("/v1/sessions", b'{"system_prompt": "\\udfff"}', "system_prompt"),
        ("/v1/sessions", b'{"system_prompt": "a\\u0000b"}', "system_prompt"),
        ("/v1/sessions", b'{"metadata": {"user": {"name": "\\ud800"}}}', "metadata.user.name"),
        ("/v1/sessions", b'{"metadata": {"tags": ["ok", "\\ud800"]}}', "metadata.tags[1]"),
        (
            "/v1/chat/completions",
            b'{"messages": [{"role": "system", "content": "\\ud800"}, '
            b'{"role": "user", "content": "hi"}]}',
            "messages[0].content",
        ),
        (
            "/v1/chat/completions",
            b'{"messages": [{"role": "user", "content": "hi \\udc00"}]}',
            "messages[0].content",
        ),
        ("/v1/completions", b'{"prompt": "\\ud800"}', "prompt"),
    ],
)
def test_text_that_is_not_valid_unicode_is_a_400_naming_the_field(
    client: TestClient, path: str, body: bytes, param: str
) -> None:
    response = client.post(path, content=body, headers=JSON)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["message"].startswith(param)
    assert client.get("/v1/sessions").json()["data"] == []  # nothing stored


def test_a_session_message_that_is_not_valid_unicode_leaves_the_session_as_it_was(
    client: TestClient,
) -> None:
    session_id = client.post("/v1/sessions", json={"title": "t"}).json()["id"]
    response = client.post(
        f"/v1/sessions/{session_id}/messages", content=b'{"content": "\\ud800"}', headers=JSON
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "content"
    assert client.get(f"/v1/sessions/{session_id}").json()["message_count"] == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_tokens", "5"), ("temperature", "0.5"), ("stream", 1), ("seed", 1.5)],
)
def test_a_value_of_the_wrong_type_is_refused_not_coerced(
    client: TestClient, field: str, value: Any
) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], field: value}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["param"] == field


def test_an_error_inside_a_list_is_named_as_a_client_writes_it(client: TestClient) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": 5}]}
    response = client.post("/v1/chat/completions", json=body)
    assert response.json()["error"]["param"] == "messages[1].content"


def fails_if_asked(settings: Settings) -> LLMProtocol:
    raise AssertionError(f"the server tried to load {settings.model.name!r}")


@pytest.mark.parametrize("name", ["/etc/passwd", "../served", "someone/some-model", "other"])
def test_a_model_the_settings_do_not_name_is_a_404_before_anything_loads(name: str) -> None:
    settings = get_settings(storage={"url": "memory://"})
    with serve(settings, LLMRegistry(fallback=fails_if_asked)) as client:
        ready(client)
        body = {"model": name, "messages": [{"role": "user", "content": "hi"}]}
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == 404
        error = response.json()["error"]
        assert (error["code"], error["param"]) == ("model_not_found", "model")
        assert "'served'" in error["message"]  # says what is served
        completion = client.post("/v1/completions", json={"model": name, "prompt": "x"})
        assert completion.status_code == 404


def test_models_the_settings_name_are_served_on_demand(tmp_path: Path) -> None:
    (tmp_path / "local-model").mkdir()
    settings = get_settings(
        storage={"url": "memory://"},
        server={"models": ["extra"], "model_directory": str(tmp_path)},
    )
    built: list[str] = []

    def build(settings: Settings) -> LLMProtocol:
        built.append(settings.model.name)
        return FakeLLM(["from " + settings.model.name], model_name=settings.model.name)

    with serve(settings, LLMRegistry(fallback=build)) as client:
        ready(client)
        for name in ["extra", "local-model"]:
            body = {"model": name, "messages": [{"role": "user", "content": "hi"}]}
            assert client.post("/v1/chat/completions", json=body).status_code == 200
        missing = {"model": "not-there", "messages": [{"role": "user", "content": "hi"}]}
        assert client.post("/v1/chat/completions", json=missing).status_code == 404
    assert built == ["extra", str(tmp_path / "local-model")]
