"""The chat page in headless Chromium on a FakeLLM: what it says while the model loads (503)
and when the server is overloaded (429, with the wait), and that it recovers by itself."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gemma_chat import InferenceError, InferenceService, get_settings
from gemma_chat.server import create_app
from gemma_chat.testing import FakeLLM
from tests.e2e.browser import launch, new_page, sync_api
from tests.e2e.servers import threaded_server

playwright_api = sync_api()


class LoadsWhenToldLLM(FakeLLM):
    """A FakeLLM whose loading ends when the test says so."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loaded = threading.Event()

    async def _load_model_implementation(self) -> None:
        await asyncio.to_thread(self.loaded.wait, 60)
        await super()._load_model_implementation()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as playwright:
        launched = launch(playwright)
        yield launched
        launched.close()


def test_while_the_model_loads_the_page_says_so_then_carries_on(browser: Any) -> None:
    settings = get_settings(storage={"url": "memory://"})
    llm = LoadsWhenToldLLM(["hello there"], model_name="slow-to-load")
    app = create_app(settings, InferenceService(settings, llm=llm))
    with threaded_server(app, healthy=False) as url:
        page = new_page(browser)
        page.goto(url)
        page.locator("#notice", has_text="The model is still loading").wait_for()
        assert page.locator("#health").inner_text() == "model loading"
        llm.loaded.set()
        # The page polls /health and loads the chats once the model is ready.
        page.locator(".session-list li.current").wait_for(timeout=15_000)
        assert page.locator("#notice").is_hidden()
        page.fill("#input", "hi")
        page.press("#input", "Enter")
        page.locator(".message.assistant[data-finished=true]").wait_for(timeout=15_000)
        assert page.locator(".message.assistant .body").inner_text() == "hello there"
        assert page.errors == []
        page.context.close()


def test_an_overloaded_server_is_said_with_the_wait(browser: Any) -> None:
    settings = get_settings(storage={"url": "memory://"}, server={"max_pending_requests": 1})
    llm = FakeLLM(["a slow answer"], model_name="busy", delay=1.5)
    app = create_app(settings, InferenceService(settings, llm=llm))
    with threaded_server(app) as url:
        page = new_page(browser)
        page.goto(url)
        page.locator(".session-list li.current").wait_for()
        # Another client holds the one place among the requests in flight.
        other = httpx.post(f"{url}/v1/sessions", json={}).json()["id"]
        holder = threading.Thread(
            target=httpx.post,
            args=(f"{url}/v1/sessions/{other}/messages",),
            kwargs={"json": {"content": "x"}, "timeout": 30},
        )
        holder.start()
        try:
            deadline = time.monotonic() + 10
            while app.state.gemma.pending < 1:  # until the other request is in
                assert time.monotonic() < deadline
                time.sleep(0.01)
            page.fill("#input", "hello?")
            page.press("#input", "Enter")
            notice = page.locator("#notice", has_text="The server is busy")
            notice.wait_for()
            assert "Try again in 1 s" in notice.inner_text()
            assert page.input_value("#input") == "hello?"  # kept, to send again
        finally:
            holder.join()
        page.press("#input", "Enter")
        page.locator(".message.assistant[data-finished=true]").wait_for(timeout=15_000)
        assert page.locator("#notice").is_hidden()
        assert page.errors == []
        page.context.close()


@pytest.mark.parametrize(
    ("path", "ready"),
    [("/", ".session-list li.current"), ("/docs", ".btn.authorize")],
)
def test_the_page_and_the_docs_load_nothing_from_elsewhere(
    browser: Any, path: str, ready: str
) -> None:
    settings = get_settings(storage={"url": "memory://"})
    app = create_app(settings, InferenceService(settings, llm=FakeLLM(model_name="m")))
    with threaded_server(app) as url:
        page = new_page(browser)
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto(url + path)
        page.locator(ready).wait_for(timeout=15_000)
        page.wait_for_load_state("networkidle")
        assert requested
        elsewhere = [u for u in requested if not u.startswith((url, "data:"))]
        assert elsewhere == []
        if path == "/docs":  # the spec's bearer scheme: Swagger UI's "Authorize" asks for it
            page.click(".btn.authorize")
            page.locator(".auth-container", has_text="APIKey").wait_for()
        assert page.errors == []
        page.context.close()


def test_the_keyboard_alone_writes_sends_and_says_what_the_server_refused(browser: Any) -> None:
    settings = get_settings(storage={"url": "memory://"})
    llm = FakeLLM(["fine, thanks"], model_name="m")
    app = create_app(settings, InferenceService(settings, llm=llm))
    with threaded_server(app) as url:
        page = new_page(browser)
        page.goto(url)
        page.locator(".session-list li.current").wait_for()
        page.keyboard.type("first line")
        page.keyboard.press("Shift+Enter")  # a new line, not a send
        page.keyboard.type("second line")
        assert page.input_value("#input") == "first line\nsecond line"
        assert page.locator(".message").count() == 0
        page.keyboard.press("Enter")
        page.locator(".message.assistant[data-finished=true]").wait_for(timeout=15_000)
        assert page.locator(".message.user").inner_text() == "first line\nsecond line"
        assert page.input_value("#input") == ""

        # A setting the server refuses: its 400, said on the page; nothing stored.
        page.click("#toggle-settings")
        page.fill("#temperature", "7")
        page.click("#save-settings")
        page.locator("#settings-note", has_text="Saved").wait_for()
        page.click("#input")
        page.keyboard.type("again")
        page.keyboard.press("Enter")
        page.locator("#notice", has_text="temperature").wait_for(timeout=15_000)
        session_id = page.evaluate("localStorage.getItem('gemma-chat.current-session')")
        stored = httpx.get(f"{url}/v1/sessions/{session_id}").json()
        assert stored["message_count"] == 2
        assert page.errors == []
        page.context.close()


def test_a_model_failing_mid_answer_is_said_and_nothing_is_kept(browser: Any) -> None:
    settings = get_settings(storage={"url": "memory://"})
    llm = FakeLLM(["one two three four"], model_name="m")
    llm.fail_with, llm.fail_after_chunks = InferenceError("the backend broke"), 2
    app = create_app(settings, InferenceService(settings, llm=llm))
    with threaded_server(app) as url:
        page = new_page(browser)
        page.goto(url)
        page.locator(".session-list li.current").wait_for()
        page.fill("#input", "hi")
        page.press("#input", "Enter")
        page.locator("#notice", has_text="The model failed").wait_for(timeout=15_000)
        answer = page.locator(".message.assistant.unsaved")
        assert answer.locator(".body").inner_text() == "one two"  # what had arrived
        assert "Failed" in answer.locator(".stats").inner_text()
        assert "the backend broke" not in page.content()  # no internals reach the client
        session_id = page.evaluate("localStorage.getItem('gemma-chat.current-session')")
        assert httpx.get(f"{url}/v1/sessions/{session_id}").json()["message_count"] == 0
        assert page.errors == []
        page.context.close()
