"""Servers on 127.0.0.1 for the e2e tests: a free port, waiting for health, uvicorn in a thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until_healthy(
    url: str, *, timeout: float, alive: Callable[[], bool] = lambda: True
) -> None:
    """Poll ``url``/health until it answers 200 (``alive`` False: the server has exited)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert alive(), "the server exited"
        assert time.monotonic() < deadline, "the server did not become healthy"
        time.sleep(0.05)


def wait_until_answering(url: str, *, timeout: float) -> None:
    """Poll ``url``/health until it answers, whatever its status."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(f"{url}/health", timeout=2)
            return
        except httpx.TransportError:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)


@contextmanager
def threaded_server(app: Any, *, timeout: float = 60, healthy: bool = True) -> Iterator[str]:
    """``app`` served by uvicorn on a thread of this process; yields its base URL once it is
    healthy (``healthy`` False: once it answers at all, its model perhaps still loading)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{port}"
        if healthy:
            wait_until_healthy(url, timeout=timeout)
        else:
            wait_until_answering(url, timeout=timeout)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
