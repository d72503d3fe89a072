"""Handing items from a generator's worker thread to asyncio queues on one event loop."""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any, Generic, TypeVar

__all__ = ["LoopHandoff", "one_wakeup_per_loop"]

T = TypeVar("T")

_held = threading.local()  # .handoffs: the handoffs waiting for the end of the block, if any


@contextmanager
def one_wakeup_per_loop() -> Iterator[None]:
    """Items put on this thread meanwhile wake their loops once, when the block ends: a decode
    step's chunks reach the loop after the step's own Python, which the loop's thread would
    otherwise interrupt (taking the GIL) from the first chunk on."""
    held: list[LoopHandoff[Any]] = []
    _held.handoffs = held
    try:
        yield
    finally:
        _held.handoffs = None
        for handoff in held:
            handoff.wake_loop()


class LoopHandoff(Generic[T]):
    """Puts items on asyncio queues of one event loop from any thread, waking the loop once for
    all the items handed over before it runs: a batched decode step's chunks for every stream
    on the loop cost one wake-up (one write to the loop's self-pipe, one pass of the loop)
    instead of one each. Each queue gets its items in the order they were handed over.

    ``put`` raises ``RuntimeError`` when the loop is closed or gone (nobody listens any more),
    as ``call_soon_threadsafe`` does. The loop is held weakly: a handoff kept per loop (in a
    ``WeakKeyDictionary``) goes with its loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)
        self._items: deque[tuple[asyncio.Queue[T], T]] = deque()
        self._scheduled = False

    def put(self, queue: asyncio.Queue[T], item: T) -> None:
        # Appended before the flag is read, and the flag cleared before the queue is drained:
        # an item is either drained by a delivery already scheduled, or schedules one.
        self._items.append((queue, item))
        if self._scheduled:
            return
        held: list[LoopHandoff[Any]] | None = getattr(_held, "handoffs", None)
        if held is None:
            self._scheduled = True
            self._schedule()
            return
        loop = self._loop()
        if loop is None or loop.is_closed():  # said now, to the job's emit
            self._items.clear()
            raise RuntimeError("the event loop is closed")
        self._scheduled = True
        held.append(self)

    def wake_loop(self) -> None:
        """Deliver what was held (``one_wakeup_per_loop``); a loop closed meanwhile drops it
        (the streams' next ``put`` raises)."""
        with suppress(RuntimeError):
            self._schedule()

    def _schedule(self) -> None:
        try:
            loop = self._loop()
            if loop is None:
                raise RuntimeError("the event loop is gone")
            loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop is closed: nobody takes these; the next put says so again
            self._items.clear()
            self._scheduled = False
            raise

    def _deliver(self) -> None:
        self._scheduled = False
        while self._items:
            queue, item = self._items.popleft()
            queue.put_nowait(item)
