"""A server killed mid-generation loses no completed turn and leaves no half-written one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gemma_chat.testing.tiny_gemma import build_tiny_gemma
from tests.e2e.servers import free_port, wait_until_healthy


class Server:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.url = f"http://127.0.0.1:{env['GEMMA_SERVER__PORT']}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gemma_chat.server.main"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        process = self.process
        wait_until_healthy(self.url, timeout=120, alive=lambda: process.poll() is None)

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> int | None:
        """SIGTERM, as a service manager stops it: the exit code, or None if it hung."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.terminate()
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    model = build_tiny_gemma(tmp_path / "model")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GEMMA_")}
    env = {
        **clean,
        "GEMMA_MODEL__NAME": str(model),
        "GEMMA_MODEL__CONTEXT_LENGTH": "8192",
        "GEMMA_CACHE_DIR": str(tmp_path / "cache"),
        "GEMMA_STORAGE__URL": f"sqlite://{tmp_path / 'sessions.db'}",
        "GEMMA_SERVER__PORT": str(free_port()),
        "GEMMA_LOG_LEVEL": "WARNING",
    }
    running = Server(env)
    yield running
    running.stop()


def test_sigkill_mid_generation_keeps_every_completed_turn(server: Server) -> None:
    server.start()
    created = httpx.post(f"{server.url}/v1/sessions", json={"title": "crash"}).json()
    messages = f"{server.url}/v1/sessions/{created['id']}/messages"
    answers = [
        httpx.post(messages, json={"content": q, "max_tokens": 8}, timeout=60).json()
        for q in ("first", "second")
    ]
    body = {"content": "third, never finished", "max_tokens": 4000, "stream": True}
    with httpx.stream("POST", messages, json=body, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if '"content"' in line:
                server.kill()  # mid-generation, without any chance to clean up
                break
    server.start()
    stored = httpx.get(f"{server.url}/v1/sessions/{created['id']}").json()
    assert [m["content"] for m in stored["messages"][::2]] == ["first", "second"]
    assert [m["content"] for m in stored["messages"][1::2]] == [
        a["message"]["content"] for a in answers
    ]
    assert stored["token_usage"]["completion_tokens"] == sum(
        a["usage"]["completion_tokens"] for a in answers
    )
    # The service works on after the restart.
    assert httpx.post(messages, json={"content": "fourth", "max_tokens": 4}, timeout=60).is_success


def test_sigterm_finishes_in_time_and_exits_0_while_a_stream_runs(server: Server) -> None:
    server.env["GEMMA_SERVER__SHUTDOWN_TIMEOUT_SECONDS"] = "2"
    server.start()
    body = {"messages": [{"role": "user", "content": "go"}], "max_tokens": 4000, "stream": True}
    started = time.monotonic()
    with httpx.stream(
        "POST", f"{server.url}/v1/chat/completions", json=body, timeout=60
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if '"content"' in line:
                break
        assert server.stop() == 0
    assert time.monotonic() - started < 20
