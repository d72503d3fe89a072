"""Idle connections cannot starve requests: a deadline for request heads, a bound on connections."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from gemma_chat.server.connections import bounded_http_protocol


async def _ok_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@contextlib.contextmanager
def _server(*, max_connections: int, header_timeout: float) -> Iterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    protocol = bounded_http_protocol(max_connections=max_connections, header_timeout=header_timeout)
    config = uvicorn.Config(_ok_app, host="127.0.0.1", port=port, http=protocol, log_level="error")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def _get(port: int, timeout: float = 2.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        return data


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    """True when the server closes ``sock`` within ``within`` seconds (what it sent is skipped)."""
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def test_a_connection_that_never_completes_its_request_head_is_closed() -> None:
    with _server(max_connections=100, header_timeout=0.5) as port:
        with (
            socket.create_connection(("127.0.0.1", port)) as silent,
            socket.create_connection(("127.0.0.1", port)) as slow,
        ):
            slow.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never ends its headers
            assert _closed_by_server(silent, within=5)
            assert _closed_by_server(slow, within=5)
        assert _get(port).startswith(b"HTTP/1.1 200")


def test_idle_connections_beyond_the_bound_make_room_for_a_request() -> None:
    with _server(max_connections=20, header_timeout=60) as port:
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(60)]
        try:
            started = time.monotonic()
            assert _get(port).startswith(b"HTTP/1.1 200")
            assert time.monotonic() - started < 2
            closed = sum(_closed_by_server(sock, within=0.2) for sock in idle)
            assert closed >= 40  # the server holds at most 20 connections
        finally:
            for sock in idle:
                sock.close()


def test_a_kept_alive_connection_gets_a_new_deadline_for_its_next_request() -> None:
    with (
        _server(max_connections=100, header_timeout=0.5) as port,
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
    ):
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # second head, never finished
        assert _closed_by_server(sock, within=5)
