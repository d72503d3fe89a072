"""The server with the embedded Gemma 3 270M, asked through the official openai client."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import platformdirs
import pytest
import uvicorn
from openai import OpenAI

from gemma_chat import EMBEDDED_MODEL_NAME, get_settings
from gemma_chat.server import create_app

pytestmark = pytest.mark.slow


def test_the_embedded_model_answers_through_the_openai_client() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The user cache dir, not the test's own: the model's conversion is shared between runs.
    cache = platformdirs.user_cache_dir("gemma-chat")
    settings = get_settings(
        model={"name": EMBEDDED_MODEL_NAME}, cache_dir=cache, storage={"url": "memory://"}
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 300  # the first run converts the model
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.2)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        with client:
            check_answers(client)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


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
