"""Shared fixtures: every test starts from default settings, whatever the shell exports."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gemma_chat import Settings, get_settings


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("GEMMA_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("GEMMA_CACHE_DIR", str(tmp_path / "gemma-cache"))
    # Servers keep sessions on disk by default: never in the real user data directory.
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)  # no stray .env file


@pytest.fixture
def settings() -> Settings:
    return get_settings()
