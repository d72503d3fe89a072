"""The CLI's commands in-process (the subprocess tests in tests/e2e run them as a user would)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gemma_chat.cli import app


@pytest.fixture
def tiny_env(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMMA_MODEL__NAME", str(tiny_model_dir))
    monkeypatch.setenv("GEMMA_MODEL__MAX_NEW_TOKENS", "6")


@pytest.mark.usefixtures("tiny_env")
def test_ask_and_info_and_chat_run_in_process(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["ask", "Hello", "--system", "Be brief."]).exit_code == 0
    info = runner.invoke(app, ["info"])
    assert info.exit_code == 0
    assert json.loads(info.stdout)["engine"] == "native"
    script = f"hi\n/system Short.\n/save {tmp_path / 'c.json'}\n/reset\n/nope\n/quit\n"
    chat = runner.invoke(app, ["chat"], input=script)
    assert chat.exit_code == 0
    assert json.loads((tmp_path / "c.json").read_text())["system_prompt"] == "Short."


def test_bad_settings_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMMA_MODEL__TOP_P", "-1")
    result = CliRunner().invoke(app, ["ask", "Hello"])
    assert result.exit_code == 2
