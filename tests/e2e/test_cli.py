"""The ``gemma-chat`` command, run as a user runs it, on a tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gemma_chat.testing.tiny_gemma import build_tiny_gemma


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    model = build_tiny_gemma(tmp_path_factory.mktemp("cli-model"))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GEMMA_")}
    return {
        **clean,
        "GEMMA_MODEL__NAME": str(model),
        "GEMMA_MODEL__MAX_NEW_TOKENS": "8",
        "GEMMA_CACHE_DIR": str(tmp_path_factory.mktemp("cli-cache")),
    }


def gemma_chat(
    *args: str, env: dict[str, str], cwd: Path, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gemma_chat.cli", *args],
        input=stdin,
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_ask_streams_one_answer(env: dict[str, str], tmp_path: Path) -> None:
    result = gemma_chat("ask", "Hello", "--temperature", "0", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\n")


def test_bad_settings_exit_2_naming_the_variable(env: dict[str, str], tmp_path: Path) -> None:
    result = gemma_chat(
        "ask", "Hello", env={**env, "GEMMA_MODEL__TEMPERATURE": "hot"}, cwd=tmp_path
    )
    assert result.returncode == 2
    assert "GEMMA_MODEL__TEMPERATURE" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unknown_model_exits_1_with_hints(env: dict[str, str], tmp_path: Path) -> None:
    result = gemma_chat("ask", "Hello", env={**env, "GEMMA_MODEL__NAME": "/nope"}, cwd=tmp_path)
    assert result.returncode == 1
    assert "was not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_chat_repl_keeps_history_and_understands_its_commands(
    env: dict[str, str], tmp_path: Path
) -> None:
    script = "/system Be brief.\nhello\n/bogus\nagain\n/save saved.json\n/reset\n/quit\n"
    result = gemma_chat("chat", "--temperature", "0", env=env, cwd=tmp_path, stdin=script)
    assert result.returncode == 0, result.stderr
    assert "Unknown command" in result.stderr
    saved = json.loads((tmp_path / "saved.json").read_text())
    assert saved["system_prompt"] == "Be brief."
    assert [m["content"] for m in saved["messages"][::2]] == ["hello", "again"]


def test_info_prints_the_model_and_its_memory(env: dict[str, str], tmp_path: Path) -> None:
    result = gemma_chat("info", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["engine"] == "native"
    assert info["memory_usage"]["rss_mb"] > 0
