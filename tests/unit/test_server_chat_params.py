"""/v1/chat/completions over ``InferenceService.chat``: OpenAI's ``param`` in errors, the
``developer`` role, nothing stored."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gemma_chat import InferenceService, get_settings
from gemma_chat.server import create_app
from gemma_chat.testing import FakeLLM


@pytest.fixture
def llm() -> FakeLLM:
    return FakeLLM(["fine"], model_name="m")


@pytest.fixture
def client(llm: FakeLLM) -> Iterator[TestClient]:
    settings = get_settings(limits={"max_messages": 3, "max_message_chars": 10})
    with TestClient(create_app(settings, InferenceService(settings, llm=llm))) as test_client:
        deadline = time.monotonic() + 5
        while test_client.get("/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        yield test_client


def user(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([user("a")] * 4, "messages"),
        ([user("a"), user("x" * 11)], "messages[1].content"),
        ([user("a"), {"role": "assistant", "content": "b"}], "messages"),
        ([user("")], "messages[0].content"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_errors_name_the_field_as_openai_does(
    client: TestClient, messages: list[dict[str, Any]], param: str | None, stream: bool
) -> None:
    response = client.post("/v1/chat/completions", json={"messages": messages, "stream": stream})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_the_developer_role_is_a_system_message_and_nothing_is_stored(
    client: TestClient, llm: FakeLLM
) -> None:
    body = {"messages": [{"role": "developer", "content": "Be brief."}, user("Hi")]}
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    assert llm.messages_seen[-1] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert client.get("/v1/sessions").json()["data"] == []
