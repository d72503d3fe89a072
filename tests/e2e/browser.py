"""Headless Chromium for the page's tests: Playwright for Python driving Debian's chromium
(Playwright's own browser download does not work here). ``sync_api()`` skips the calling test
module, saying why, where either is missing (.ci/run installs both)."""

from __future__ import annotations

import shutil
from types import ModuleType
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
KEY_STORAGE = "gemma-chat.api-key"  # where the page keeps the API key (static/chat.js)


def sync_api() -> ModuleType:
    """Playwright's sync API, or a skip of the whole module that says what is missing."""
    api = pytest.importorskip(
        "playwright.sync_api",
        reason="Playwright is not installed: pip install -r requirements-dev.txt",
    )
    if shutil.which(CHROMIUM) is None:
        pytest.skip(
            f"{CHROMIUM} not found: apt-get install chromium (as .ci/run does)",
            allow_module_level=True,
        )
    return api


def launch(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def new_page(browser: Any, *, key: str | None = None, width: int = 1280, height: int = 800) -> Any:
    """A page in a fresh context (its own local storage), the API key stored first when given;
    ``page.errors`` collects the page's uncaught JavaScript errors."""
    context = browser.new_context(viewport={"width": width, "height": height})
    if key is not None:
        context.add_init_script(f"localStorage.setItem({KEY_STORAGE!r}, {key!r})")
    page = context.new_page()
    page.set_default_timeout(120_000)  # answers on two shared CPU cores
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    return page
