"""Beyond its limit of requests in flight, the server answers 429 at once, never a timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from gemma_chat import InferenceService, get_settings
from gemma_chat.server import create_app
from gemma_chat.testing import FakeLLM
from tests.e2e.servers import threaded_server

CHAT = {"messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    settings = get_settings(server={"max_pending_requests": 3})
    llm = FakeLLM(["one two three four"], delay=0.1)  # 0.4 s a streamed answer
    app = create_app(settings, InferenceService(settings, llm=llm))
    with threaded_server(app, timeout=30) as url:
        yield url


async def burst(url: str, count: int, stream: bool) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:

        async def one() -> httpx.Response:
            response = await client.post("/v1/chat/completions", json={**CHAT, "stream": stream})
            return response

        return await asyncio.gather(*(one() for _ in range(count)))


@pytest.mark.parametrize("stream", [False, True])
def test_requests_beyond_the_limit_get_429_with_retry_after(base_url: str, stream: bool) -> None:
    started = time.monotonic()
    responses = asyncio.run(burst(base_url, 6, stream))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 200, 429, 429, 429]
    rejected = [r for r in responses if r.status_code == 429]
    assert all(r.headers["retry-after"] == "1" for r in rejected)
    assert all(r.json()["error"]["code"] == "overloaded" for r in rejected)
    assert time.monotonic() - started < 5
    # Every place was given back: a new burst within the limit passes whole.
    assert [r.status_code for r in asyncio.run(burst(base_url, 3, stream))] == [200] * 3
