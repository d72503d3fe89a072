"""The server with the embedded Gemma 3 270M, asked through the official openai client."""

from __future__ import annotations

import platformdirs
import pytest
from openai import OpenAI

from gemma_chat import EMBEDDED_MODEL_NAME, get_settings
from gemma_chat.server import create_app
from tests.e2e.servers import threaded_server

pytestmark = pytest.mark.slow


def test_the_embedded_model_answers_through_the_openai_client() -> None:
    # The user cache dir, not the test's own: the model's conversion is shared between runs.
    cache = platformdirs.user_cache_dir("gemma-chat")
    settings = get_settings(
        model={"name": EMBEDDED_MODEL_NAME}, cache_dir=cache, storage={"url": "memory://"}
    )
    # The first run converts the model: minutes, not seconds.
    with threaded_server(create_app(settings), timeout=300) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        with client:
            check_answers(client)


def check_answers(client: OpenAI) -> None:
    question = [{"role": "user", "content": "What is the capital of France?"}]
    completion = client.chat.completions.create(
        model=EMBEDDED_MODEL_NAME,
        messages=question,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=24,
    )
    assert "Paris" in (completion.choices[0].message.content or "")
    stream = client.chat.completions.create(
        model=EMBEDDED_MODEL_NAME,
        messages=question,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=24,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == completion.choices[0].message.content
