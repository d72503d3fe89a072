"""LoopHandoff: chunks from a worker thread reach their asyncio queues in order, with one
wake-up of the event loop for everything handed over before the loop runs."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from typing import Any

import pytest

from gemma_chat.infrastructure.llm.generation.handoff import LoopHandoff, one_wakeup_per_loop


class CountingLoop:
    """Wraps the running loop, counting ``call_soon_threadsafe`` calls (the loop's wake-ups)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.wakeups = loop, 0

    def call_soon_threadsafe(self, callback: Any, *args: Any) -> Any:
        self.wakeups += 1
        return self.loop.call_soon_threadsafe(callback, *args)

    def is_closed(self) -> bool:
        return self.loop.is_closed()


@pytest.mark.asyncio
async def test_a_step_of_chunks_for_several_streams_wakes_the_loop_once_and_keeps_order() -> None:
    counting = CountingLoop(asyncio.get_running_loop())
    handoff: LoopHandoff[int] = LoopHandoff(counting)  # type: ignore[arg-type]
    queues: list[asyncio.Queue[int]] = [asyncio.Queue() for _ in range(8)]

    def step(first: int) -> None:  # a worker thread's decode step: one item per stream
        for i, queue in enumerate(queues):
            handoff.put(queue, first + i)

    for first in (0, 100):
        worker = threading.Thread(target=step, args=(first,))
        worker.start()
        worker.join()  # the loop has not run meanwhile
    assert counting.wakeups == 1
    got = [[await asyncio.wait_for(q.get(), 5), await asyncio.wait_for(q.get(), 5)] for q in queues]
    assert got == [[i, 100 + i] for i in range(8)]
    handoff.put(queues[0], 7)  # after a delivery, the next item wakes the loop again
    assert await asyncio.wait_for(queues[0].get(), 5) == 7
    assert counting.wakeups == 2


@pytest.mark.asyncio
async def test_items_handed_over_while_the_loop_delivers_are_not_lost() -> None:
    handoff: LoopHandoff[int] = LoopHandoff(asyncio.get_running_loop())
    queue: asyncio.Queue[int] = asyncio.Queue()
    count = 20_000

    def produce() -> None:
        for i in range(count):
            handoff.put(queue, i)

    worker = threading.Thread(target=produce)
    worker.start()
    got = [await asyncio.wait_for(queue.get(), 5) for _ in range(count)]
    worker.join()
    assert got == list(range(count))


def test_a_closed_loop_is_reported_on_every_put() -> None:
    loop = asyncio.new_event_loop()
    handoff: LoopHandoff[int] = LoopHandoff(loop)
    queue: asyncio.Queue[int] = asyncio.Queue()
    loop.close()
    for _ in range(2):  # the generator cancels its job on the first, and may still put again
        with pytest.raises(RuntimeError):
            handoff.put(queue, 1)


def test_the_handoff_does_not_keep_its_loop_alive() -> None:
    loop = asyncio.new_event_loop()
    handoffs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopHandoff[int]] = (
        weakref.WeakKeyDictionary()
    )
    handoffs[loop] = LoopHandoff(loop)
    loop.close()
    del loop
    gc.collect()
    assert len(handoffs) == 0


@pytest.mark.asyncio
async def test_a_held_step_wakes_the_loop_at_its_end_once_for_every_stream() -> None:
    counting = CountingLoop(asyncio.get_running_loop())
    handoff: LoopHandoff[int] = LoopHandoff(counting)  # type: ignore[arg-type]
    queues: list[asyncio.Queue[int]] = [asyncio.Queue() for _ in range(3)]
    inside: list[int] = []

    def step() -> None:
        with one_wakeup_per_loop():
            for i, queue in enumerate(queues):
                handoff.put(queue, i)
                inside.append(counting.wakeups)  # not woken while the step runs
        inside.append(counting.wakeups)

    worker = threading.Thread(target=step)
    worker.start()
    worker.join()
    assert inside == [0, 0, 0, 1]
    assert [await asyncio.wait_for(q.get(), 5) for q in queues] == [0, 1, 2]
    handoff.put(queues[0], 9)  # outside a held step: at once, as before
    assert await asyncio.wait_for(queues[0].get(), 5) == 9
    assert counting.wakeups == 2


def test_a_held_put_on_a_closed_loop_raises_at_once() -> None:
    loop = asyncio.new_event_loop()
    handoff: LoopHandoff[int] = LoopHandoff(loop)
    queue: asyncio.Queue[int] = asyncio.Queue()
    loop.close()
    with one_wakeup_per_loop(), pytest.raises(RuntimeError):
        handoff.put(queue, 1)  # the job's emit cancels it now, not after the step


def test_a_loop_closed_during_a_held_step_drops_its_items_and_says_so_next_time() -> None:
    loop = asyncio.new_event_loop()
    handoff: LoopHandoff[int] = LoopHandoff(loop)
    queue: asyncio.Queue[int] = asyncio.Queue()
    with one_wakeup_per_loop():
        handoff.put(queue, 1)
        loop.close()  # the end of the block does not raise: nobody is left to hear it
    with pytest.raises(RuntimeError):
        handoff.put(queue, 2)
