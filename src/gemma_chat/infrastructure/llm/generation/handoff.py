"""Handing items from a generator's worker thread to asyncio queues on one event loop."""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from typing import Generic, TypeVar

__all__ = ["LoopHandoff"]

T = TypeVar("T")


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
        self._scheduled = True
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
