"""The chat page at ``/`` in headless Chromium (Playwright for Python driving Debian's
``chromium``), on a real server with the embedded model and an API key: streaming, Stop,
history after a reload, sessions, the key, bad input. Screenshots go to test-artifacts/.

Skipped, saying why, where Playwright or /usr/bin/chromium is missing (.ci/run installs both).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import platformdirs
import pytest

from gemma_chat import EMBEDDED_MODEL_NAME, get_settings
from gemma_chat.server import create_app
from tests.e2e.browser import KEY_STORAGE, launch, sync_api
from tests.e2e.browser import new_page as new_browser_page
from tests.e2e.servers import threaded_server

playwright_api = sync_api()

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
KEY = "web-ui-test-key"
# A question the embedded model answers (greedily) with a sentence it repeats until max tokens:
# Stop comes in the middle of the answer, whatever the machine's speed. (Sampled, a request for
# a long story is often answered in ten tokens.)
LONG_QUESTION = "What are the planets of the solar system? Answer as a numbered list."


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    storage = tmp_path_factory.mktemp("web-ui") / "sessions.db"
    settings = get_settings(
        model={"name": EMBEDDED_MODEL_NAME},
        # The user cache dir, not the test's own: the model's conversion is shared between runs.
        cache_dir=platformdirs.user_cache_dir("gemma-chat"),
        storage={"url": f"sqlite:///{storage}"},
        server={"api_key": KEY},
    )
    with threaded_server(create_app(settings), timeout=300) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as playwright:
        launched = launch(playwright)
        yield launched
        launched.close()


def new_page(browser: Any, *, key: str | None = KEY, width: int = 1280, height: int = 800) -> Any:
    return new_browser_page(browser, key=key, width=width, height=height)


@pytest.fixture
def page(browser: Any, server: str) -> Iterator[Any]:
    page = new_page(browser)
    page.goto(server)
    page.locator(".session-list li.current").wait_for()
    yield page
    assert page.errors == [], "the page's JavaScript failed"
    page.context.close()


def api(server: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {KEY}"}
    return httpx.request(method, f"{server}{path}", headers=headers, timeout=30, **kwargs)


def current_session(page: Any, server: str) -> dict[str, Any]:
    session_id = page.evaluate("localStorage.getItem('gemma-chat.current-session')")
    response = api(server, "GET", f"/v1/sessions/{session_id}")
    assert response.status_code == 200
    detail: dict[str, Any] = response.json()
    return detail


def set_generation(page: Any, *, temperature: str, max_tokens: str) -> None:
    page.click("#toggle-settings")
    page.fill("#temperature", temperature)
    page.fill("#max-tokens", max_tokens)
    page.click("#save-settings")
    page.locator("#settings-note", has_text="Saved").wait_for()
    page.click("#toggle-settings")


def new_chat(page: Any) -> None:
    before = page.locator(".session-list li").count()
    page.click("#new-session")
    # A function, not an expression: the page's CSP forbids evaluating strings in it.
    page.wait_for_function(
        "n => document.querySelectorAll('.session-list li').length > n", arg=before
    )


def send(page: Any, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")


def wait_for_streamed_chunks(page: Any, count: int) -> None:
    """Until the answer under way has shown ``count`` pieces while it is still streaming."""
    page.wait_for_function(
        "n => { const m = document.querySelector('.message.assistant.streaming');"
        " return m !== null && Number(m.dataset.chunks || 0) >= n; }",
        arg=count,
    )


def cancelled_total(server: str) -> float:
    metrics = httpx.get(f"{server}/metrics", timeout=10).text
    found = re.search(r"^gemma_requests_cancelled_total ([\d.]+)$", metrics, re.M)
    assert found is not None
    return float(found.group(1))


def test_an_answer_streams_in_and_the_history_survives_a_reload(page: Any, server: str) -> None:
    new_chat(page)
    set_generation(page, temperature="0", max_tokens="48")
    send(page, "What is the capital of France? Answer in one sentence.")
    answer = page.locator(".message.assistant[data-finished=true]")
    answer.wait_for()
    stats = answer.locator(".stats").inner_text()
    assert re.fullmatch(
        r"\d+ tokens · first token \d+\.\d\d s · \d+\.\d tokens/s( · cut at max tokens)?", stats
    ), stats
    shown = answer.locator(".body").inner_text()
    assert "Paris" in shown

    stored = current_session(page, server)
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant"]
    assert stored["metadata"]["web_ui"] == {"model": None, "temperature": 0, "max_tokens": 48}
    assert stored["title"].startswith("What is the capital of France?")  # from the message

    page.reload()
    page.locator(".message.assistant").wait_for()
    assert page.locator(".message.user").inner_text() == stored["messages"][0]["content"]
    assert "Paris" in page.locator(".message.assistant .body").inner_text()
    assert page.locator("#session-title").inner_text() == stored["title"]
    page.click("#toggle-settings")
    assert page.input_value("#max-tokens") == "48"  # the chat's settings, from the server

    # Regenerate: a new answer replaces the last one on the server.
    old_id = stored["messages"][1]["id"]
    page.click("#regenerate")
    page.locator(".message.assistant[data-finished=true]").wait_for()
    again = current_session(page, server)
    assert len(again["messages"]) == 2
    assert again["messages"][1]["id"] != old_id
    assert page.locator(".message.assistant:visible").count() == 1


def test_stop_ends_the_generation_on_the_server(page: Any, server: str) -> None:
    new_chat(page)
    set_generation(page, temperature="0", max_tokens="1500")
    cancelled = cancelled_total(server)
    send(page, LONG_QUESTION)
    # Tokens arrive, and are shown, while the answer is still being generated.
    wait_for_streamed_chunks(page, 4)
    page.wait_for_function(
        "() => document.querySelector('.message.assistant.streaming .body').textContent !== ''"
    )
    page.keyboard.press("Escape")  # the same as the Stop button
    page.locator(".message.assistant[data-stopped=true]").wait_for()
    assert "Stopped" in page.locator(".message.assistant .stats").inner_text()
    deadline = time.monotonic() + 30
    while cancelled_total(server) < cancelled + 1:
        assert time.monotonic() < deadline, "the server did not cancel the generation"
        time.sleep(0.1)
    assert current_session(page, server)["messages"] == []  # a stopped turn is not kept
    assert page.input_value("#input") == LONG_QUESTION  # back in the box, to send again
    assert page.locator("#send").is_visible()
    assert api(server, "GET", "/health").json()["status"] == "healthy"


def test_sessions_are_created_renamed_switched_and_deleted(page: Any, server: str) -> None:
    new_chat(page)
    session_id = page.evaluate("localStorage.getItem('gemma-chat.current-session')")
    item = page.locator(f".session-list li[data-id='{session_id}']")
    item.locator(".rename").click()
    page.fill(".session-list input", "Recettes de crêpes 🥞 <b>")
    page.press(".session-list input", "Enter")
    item.locator(".open", has_text="Recettes de crêpes 🥞 <b>").wait_for()
    assert api(server, "GET", f"/v1/sessions/{session_id}").json()["title"] == (
        "Recettes de crêpes 🥞 <b>"
    )
    assert page.locator("#session-title").inner_text() == "Recettes de crêpes 🥞 <b>"

    # Another chat, then back to this one.
    new_chat(page)
    other = page.evaluate("localStorage.getItem('gemma-chat.current-session')")
    assert other != session_id
    item.locator(".open").click()
    page.locator(f".session-list li.current[data-id='{session_id}']").wait_for()

    page.once("dialog", lambda dialog: dialog.accept())
    item.locator(".delete").click()
    item.wait_for(state="detached")
    assert api(server, "GET", f"/v1/sessions/{session_id}").status_code == 404
    ids = [s["id"] for s in api(server, "GET", "/v1/sessions").json()["data"]]
    assert session_id not in ids
    assert other in ids


def test_a_missing_or_wrong_key_is_said_and_the_right_one_is_kept(
    browser: Any, server: str
) -> None:
    page = new_page(browser, key=None)
    page.goto(server)
    notice = page.locator("#notice")
    notice.locator("text=needs an API key").wait_for()
    page.fill("#api-key", "not-the-key")
    page.click("#key-form button[type=submit]")
    notice.locator("text=refused the API key").wait_for()
    page.fill("#api-key", KEY)
    page.click("#key-form button[type=submit]")
    page.locator(".session-list li.current").wait_for()
    assert notice.is_hidden()
    page.reload()  # the key is kept in this browser
    page.locator(".session-list li.current").wait_for()
    assert page.evaluate(f"localStorage.getItem({KEY_STORAGE!r})") == KEY
    assert page.errors == []
    page.context.close()


def test_markup_and_huge_pastes_are_shown_as_text_and_the_server_stays_healthy(
    page: Any, server: str
) -> None:
    new_chat(page)
    set_generation(page, temperature="0", max_tokens="8")
    hostile = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2"> ☃ 𝄞 مرحبا'
    send(page, hostile)
    page.locator(".message.assistant[data-finished=true]").wait_for()
    assert page.locator(".message.user").inner_text() == hostile
    assert page.locator(".messages script, .messages img").count() == 0
    assert page.evaluate("window.pwned") is None

    # The model's text goes through the Markdown renderer: markup there is text too.
    rendered = page.evaluate("""() => {
            const box = document.createElement('div');
            GemmaMarkdown.render('**bold** <img src=x onerror="window.pwned=3">\\n'
              + '[x](javascript:alert(1)) [ok](https://example.org)\\n'
              + '```html\\n<script>window.pwned=4</script>\\n```', box);
            return {html: box.innerHTML, text: box.textContent,
                    tags: [...box.querySelectorAll('*')].map(e => e.tagName)};
        }""")
    assert set(rendered["tags"]) <= {"P", "STRONG", "BR", "A", "PRE", "CODE", "SPAN"}
    assert '<img src=x onerror="window.pwned=3">' in rendered["text"]
    assert "<script>window.pwned=4</script>" in rendered["text"]
    assert "javascript:" not in re.findall(r'href="([^"]*)"', rendered["html"])[0]
    assert page.evaluate("window.pwned") is None

    # Longer than GEMMA_LIMITS__MAX_MESSAGE_CHARS: the server's 400, said on the page.
    send(page, "x" * 40_000)
    page.locator("#notice", has_text="content has 40000 characters").wait_for()
    assert page.locator(".message.assistant.unsaved .stats", has_text="Failed").count() == 1
    assert api(server, "GET", "/health").json()["status"] == "healthy"


def test_screenshots_at_desktop_and_phone_width(browser: Any, server: str) -> None:
    """test-artifacts/chat-page-*.png (docs/chat-page.png is a copy of the desktop one)."""
    ARTIFACTS.mkdir(exist_ok=True)
    for session in api(server, "GET", "/v1/sessions").json()["data"]:  # the other tests' chats
        api(server, "DELETE", f"/v1/sessions/{session['id']}")
    for title in ("Sourdough starter", "Trip to Lisbon"):
        api(server, "POST", "/v1/sessions", json={"title": title})
    page = new_page(browser, width=1280, height=800)
    page.goto(server)
    page.locator(".session-list li.current").wait_for()
    new_chat(page)
    page.click("#toggle-settings")
    page.fill("#system-prompt", "You are a helpful assistant. Answer briefly.")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "64")
    page.click("#save-settings")
    page.locator("#settings-note", has_text="Saved").wait_for()
    page.screenshot(path=str(ARTIFACTS / "chat-page-settings.png"))
    page.click("#toggle-settings")
    assert page.locator("#settings").is_hidden()
    send(page, "What is the capital of France?")
    page.locator(".message.assistant[data-finished=true]").wait_for()
    send(page, "And of Italy?")
    page.locator(".message.assistant[data-finished=true] >> nth=1").wait_for()
    page.screenshot(path=str(ARTIFACTS / "chat-page-desktop.png"))
    stored = current_session(page, server)
    assert stored["system_prompt"] == "You are a helpful assistant. Answer briefly."
    assert len(stored["messages"]) == 4

    # Another browser (its own local storage) opens the same chat, its history from the server.
    phone = new_page(browser, width=390, height=844)
    phone.goto(server)
    phone.locator(".message.assistant >> nth=1").wait_for()
    asked = phone.locator(".message.user").all_inner_texts()
    assert asked == [m["content"] for m in stored["messages"] if m["role"] == "user"]
    assert phone.locator(".message.assistant").count() == 2
    assert phone.locator(".sidebar").bounding_box()["x"] < 0  # off screen until opened
    phone.screenshot(path=str(ARTIFACTS / "chat-page-phone.png"))
    phone.click("#open-sidebar")
    phone.wait_for_function(
        "() => document.querySelector('.sidebar').getBoundingClientRect().x >= 0"
    )
    phone.screenshot(path=str(ARTIFACTS / "chat-page-phone-sidebar.png"))
    assert page.errors == []
    assert phone.errors == []
    page.context.close()
    phone.context.close()
