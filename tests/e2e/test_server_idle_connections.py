"""Thousands of idle connections do not starve /health (issue 14, finding 5): the server as
`gemma-chat serve` configures uvicorn (server_config), on a FakeLLM."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import uvicorn

from gemma_chat import InferenceService, get_settings
from gemma_chat.server import create_app
from gemma_chat.server.main import server_config
from gemma_chat.testing import FakeLLM
from tests.e2e.servers import free_port, wait_until_healthy


def test_idle_connections_neither_starve_health_nor_pile_up() -> None:
    port = free_port()
    settings = get_settings(
        storage={"url": "memory://"},
        server={"max_connections": 100, "header_timeout_seconds": 2},
    )
    app = create_app(settings, InferenceService(settings, llm=FakeLLM(["ok"])))
    server = uvicorn.Server(server_config(settings, app, port=port))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    idle: list[socket.socket] = []
    try:
        wait_until_healthy(url, timeout=30)
        for _ in range(1000):  # a slowloris client: connect, send nothing
            idle.append(socket.create_connection(("127.0.0.1", port)))
        started = time.monotonic()
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200
        assert time.monotonic() - started < 2
        time.sleep(0.5)
        assert len(server.server_state.connections) <= 101  # the bound holds
        time.sleep(2.5)  # past the header deadline: the idle ones that were left are gone too
        assert len(server.server_state.connections) == 0
    finally:
        for sock in idle:
            sock.close()
        server.should_exit = True
        thread.join(timeout=30)
