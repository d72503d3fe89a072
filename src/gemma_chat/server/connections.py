"""Connection limits for uvicorn, so that idle connections cannot starve real requests.

uvicorn closes a kept-alive connection that stays idle between requests, but not a new connection
that never completes its request head (a slowloris client), and its ``limit_concurrency`` answers
503 to every request once that many connections are open, idle ones included. The HTTP protocol
built by ``bounded_http_protocol`` adds two rules:

- a deadline for each request head (GEMMA_SERVER__HEADER_TIMEOUT_SECONDS): a connection that has
  not sent a whole request line and headers by then is closed;
- a bound on open connections (GEMMA_SERVER__MAX_CONNECTIONS): a connection beyond it closes the
  longest-idle connection that has no request in progress, or itself when every one is busy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["bounded_http_protocol"]

logger = logging.getLogger(__name__)


class _BoundedH11Protocol(H11Protocol):
    max_connections = 1000
    header_timeout = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._idle_since = time.monotonic()
        self._heads = 0  # request heads received on this connection
        self._head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()
        # A closed connection stays in the set until its connection_lost: count the open ones.
        open_ = [c for c in self.connections if not c.transport.is_closing()]
        if len(open_) > self.max_connections:
            idle = [c for c in open_ if isinstance(c, _BoundedH11Protocol) and c.idle]
            victim = min(idle, key=lambda c: c._idle_since, default=self)
            logger.warning(
                "More than %d connections (GEMMA_SERVER__MAX_CONNECTIONS): closing %s one.",
                self.max_connections,
                "an idle" if victim is not self else "the new",
            )
            victim.close_now()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a whole request head arrived
            self._heads += 1
            self._disarm_head_deadline()

    def on_response_complete(self) -> None:
        self._idle_since = time.monotonic()
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_deadline()

    @property
    def idle(self) -> bool:
        """No request in progress: between requests, or before the first head is complete."""
        return self.cycle is None or self.cycle.response_complete

    def close_now(self) -> None:
        self._disarm_head_deadline()
        if not self.transport.is_closing():
            self.transport.close()

    def _arm_head_deadline(self) -> None:
        self._disarm_head_deadline()
        heads = self._heads
        self._head_deadline = self.loop.call_later(self.header_timeout, self._head_timed_out, heads)

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self, heads: int) -> None:
        self._head_deadline = None
        if self._heads == heads and self.idle:
            self.close_now()


def bounded_http_protocol(*, max_connections: int, header_timeout: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the two limits above (pass it as ``uvicorn.run(http=...)``)."""
    return type(
        "BoundedH11Protocol",
        (_BoundedH11Protocol,),
        {"max_connections": max_connections, "header_timeout": header_timeout},
    )
