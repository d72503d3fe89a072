"""Continuous batching on one worker thread.

Requests join at step boundaries: each new request is prefilled on its own (reusing the longest
cached prefix of its prompt), then every running request advances one token per batched decode
step. A request leaves as soon as it finishes or is cancelled, and its keys and values stay in
its slot (or move to the prefix store) for the conversation's next turn. Each slot's memory is
its own (``KVCache``): a slot taken by another conversation, or idle, gives its memory back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from gemma_chat.domain.errors import BrokenLogitsError
from gemma_chat.domain.models import FinishReason
from gemma_chat.infrastructure.heap import give_back_freed_heap
from gemma_chat.infrastructure.llm.engine.batch_sampling import MaskStats, choose_tokens
from gemma_chat.infrastructure.llm.engine.kv_cache import DEFAULT_CHUNK, KVCache
from gemma_chat.infrastructure.llm.engine.prefix_store import PrefixStore, common_prefix_length
from gemma_chat.infrastructure.llm.engine.text_models import TextModel
from gemma_chat.infrastructure.llm.generation.handoff import one_wakeup_per_loop
from gemma_chat.infrastructure.llm.generation.job import GenerationJob
from gemma_chat.infrastructure.llm.generation.sampling import TokenSampler

__all__ = ["BatchScheduler", "SchedulerStats"]

logger = logging.getLogger(__name__)


@dataclass
class _Slot:
    index: int
    job: GenerationJob | None = None
    sampler: TokenSampler | None = None
    tokens: list[int] = field(default_factory=list)  # tokens whose keys/values are cached
    next_token: int | None = None  # sampled, not yet fed to the model
    last_used: float = 0.0


@dataclass
class SchedulerStats:
    steps: int = 0
    decoded_tokens: int = 0
    prefilled_tokens: int = 0
    reused_tokens: int = 0
    max_batch: int = 0
    masks: MaskStats = field(default_factory=MaskStats)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "masks"} | {
            "constrained_tokens": self.masks.constrained_tokens,
            "masked_rows": self.masks.masked_rows,
            "mask_seconds": round(self.masks.mask_seconds, 6),
        }


class BatchScheduler:
    def __init__(
        self,
        model: TextModel,
        *,
        max_batch_size: int,
        dtype: torch.dtype,
        prefix_budget_bytes: int,
        idle_release_seconds: float | None = None,
        chunk: int = DEFAULT_CHUNK,
        name: str = "gemma-engine",
    ) -> None:
        self.model = model
        self.max_batch_size = max_batch_size
        self.cache = KVCache(model.config, slots=max_batch_size, dtype=dtype, chunk=chunk)
        # After this long with nothing to do, the slots' keys and values move to the prefix
        # store (within its budget) and every slot's memory is handed back: the memory a burst
        # of long conversations grew gives itself back (None: never).
        self.idle_release_seconds = idle_release_seconds
        self.store = PrefixStore(prefix_budget_bytes)
        self.stats = SchedulerStats()
        self._slots = [_Slot(i) for i in range(max_batch_size)]
        self._waiting: deque[GenerationJob] = deque()
        self._wakeup = threading.Condition()
        self._running = True
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- called from other threads ---------------------------------------------------------------

    def submit(self, job: GenerationJob) -> None:
        with self._wakeup:
            if not self._running:
                raise RuntimeError("the engine is stopped")
            self._waiting.append(job)
            self._wakeup.notify()

    def wake(self) -> None:
        """Re-check cancellations now (a consumer went away)."""
        with self._wakeup:
            self._wakeup.notify()

    def close(self) -> None:
        with self._wakeup:
            self._running = False
            self._wakeup.notify()
        self._thread.join(timeout=30)

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def active_count(self) -> int:
        return sum(1 for s in self._slots if s.job is not None)

    # -- the worker thread -----------------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                admitted = self._next_jobs()
                if admitted is None:
                    return
                try:
                    # The step's chunks reach their event loops at its end, in one wake-up each.
                    with one_wakeup_per_loop():
                        if self.model.takes_rows:
                            self._step(admitted)
                            continue
                        for job in admitted:
                            self._prefill(job)
                        self._decode_step()
                except Exception as exc:  # a bug of ours: fail the requests, keep the thread
                    logger.exception("engine step failed")
                    self._fail([s for s in self._slots if s.job is not None], exc)
                    for job in admitted:
                        job.fail(exc)

    def _next_jobs(self) -> list[GenerationJob] | None:
        """Wait for work; the jobs to admit now (None: shut down)."""
        with self._wakeup:
            while self._running and not self._waiting and not self._has_active():
                if self.idle_release_seconds is None or not self._holds_idle_memory():
                    self._wakeup.wait()
                elif not self._wakeup.wait(self.idle_release_seconds):  # idle all that time
                    self._release_idle_memory()
            if not self._running:
                self._abort_all()
                return None
            if self._waiting and not self._has_active():
                self._gather_burst()
            for slot in self._slots:
                if slot.job is not None and slot.job.cancel.is_set():
                    self._release(slot, FinishReason.CANCELLED)
            admitted: list[GenerationJob] = []
            free = sum(1 for s in self._slots if s.job is None)
            while self._waiting and len(admitted) < free:
                job = self._waiting.popleft()
                if job.cancel.is_set():
                    job.finish(FinishReason.CANCELLED)
                else:
                    admitted.append(job)
            return admitted

    def _gather_burst(self) -> None:
        """The engine was idle and a request came: requests that arrive with it (a client's
        batch, ``asyncio.gather``: ~0.05-0.1 ms apart) join its first step, not the next one.
        Waits while they keep coming, ``_BURST_GAP`` at most for each (a lone request's only
        cost), ``_BURST_LIMIT`` in all. Called holding ``_wakeup``."""
        deadline = time.monotonic() + _BURST_LIMIT
        while self._running and len(self._waiting) < self.max_batch_size:
            seen = len(self._waiting)
            remaining = min(_BURST_GAP, deadline - time.monotonic())
            if remaining <= 0:
                return
            self._wakeup.wait(remaining)
            if len(self._waiting) == seen:  # none came (or a cancellation woke us)
                return

    def _holds_idle_memory(self) -> bool:
        return self.cache.nbytes > 0

    def _release_idle_memory(self) -> None:
        """Keep the idle slots' conversations in the prefix store (a next turn copies its
        prefix back) and hand every slot's memory back."""
        for slot in self._slots:
            self._save(slot)
            slot.tokens = []
            self.cache.release(slot.index)
        give_back_freed_heap()
        logger.debug("engine idle: KV cache released, %d prefixes stored", len(self.store))

    def _has_active(self) -> bool:
        return any(s.job is not None for s in self._slots)

    def _step(self, admitted: list[GenerationJob]) -> None:
        """One pass over the weights for everything: the running sequences' next tokens and
        the new requests' prompts (beyond their cached prefix), as rows of one batch."""
        decoding = self._decoding_slots()
        ids = [s.next_token for s in decoding]
        positions = [len(s.tokens) for s in decoding]
        rows = [s.index for s in decoding]
        wanted = list(range(len(decoding)))  # the rows whose logits are needed
        prefilling: list[tuple[_Slot, int]] = []
        for job in admitted:
            admission = self._admit(job)
            if admission is None:
                continue
            slot, reused = admission
            prompt = job.prompt_ids
            ids += prompt[reused:]
            positions += range(reused, len(prompt))
            rows += [slot.index] * (len(prompt) - reused)
            wanted.append(len(ids) - 1)  # the prompt's last token
            prefilling.append((slot, reused))
        if not ids:
            return
        try:
            logits = self.model.forward_rows(
                torch.tensor(ids, dtype=torch.long),
                torch.tensor(positions, dtype=torch.long),
                torch.tensor(rows, dtype=torch.long),
                self.cache,
                wanted,
            )  # [W, V]
        except Exception as exc:
            logger.exception("step failed")
            self._fail([*decoding, *(s for s, _ in prefilling)], exc)
            return

        def seen(row: int) -> list[int]:  # the tokens before row's next one
            if row < len(decoding):
                slot = decoding[row]
                assert slot.next_token is not None
                return [*slot.tokens, slot.next_token]
            job = prefilling[row - len(decoding)][0].job
            return job.prompt_ids if job is not None else []

        chosen = self._chosen_tokens(logits, [*decoding, *(s for s, _ in prefilling)], seen)
        self._decoded(decoding, logits, chosen)
        for j, (slot, reused) in enumerate(prefilling):
            at = len(decoding) + j
            self._prefilled(slot, reused, logits[at], chosen[at])

    def _chosen_tokens(
        self, logits: torch.Tensor, slots: list[_Slot], seen: Callable[[int], list[int]]
    ) -> list[int | None]:
        """The rows' next tokens, chosen for the whole batch at once (``choose_tokens``)."""
        constraints = [s.job.constraint if s.job is not None else None for s in slots]
        return choose_tokens(
            self.model, logits, [s.sampler for s in slots], seen, constraints, self.stats.masks
        )

    def _prefill(self, job: GenerationJob) -> None:
        """A new request's prompt alone (models without ``forward_rows``)."""
        admission = self._admit(job)
        if admission is None:
            return
        slot, reused = admission
        prompt = job.prompt_ids
        try:
            ids = torch.tensor([prompt[reused:]], dtype=torch.long)  # [1, S]
            positions = torch.arange(reused, len(prompt)).view(1, -1)  # [1, S]
            logits = self.model(ids, positions, torch.tensor([slot.index]), self.cache)  # [1, V]
        except Exception as exc:  # a failure here belongs to this request alone
            logger.exception("prefill failed")
            self._fail([slot], exc)
            return
        self._prefilled(slot, reused, logits[0])

    def _decode_step(self) -> None:
        """The running requests' next tokens (models without ``forward_rows``)."""
        running = self._decoding_slots()
        if not running:
            return
        ids = torch.tensor([[s.next_token] for s in running], dtype=torch.long)  # [B, 1]
        positions = torch.tensor([[len(s.tokens)] for s in running])  # [B, 1]
        rows = torch.tensor([s.index for s in running])  # [B]
        try:
            logits = self.model(ids, positions, rows, self.cache, decoding=True)  # [B, V]
        except Exception as exc:
            logger.exception("decode step failed")
            self._fail(running, exc)
            return
        self._decoded(running, logits, [None] * len(running))

    def _decoding_slots(self) -> list[_Slot]:
        """Slots whose request has a sampled token to feed the model."""
        return [s for s in self._slots if s.job is not None and s.next_token is not None]

    def _admit(self, job: GenerationJob) -> tuple[_Slot, int] | None:
        """A slot for a new request, and how many of its prompt's tokens are cached there; None
        when the cache cannot make room (that request fails alone)."""
        # Room for the whole answer and a next turn's message now: growing the cache later
        # copies all of it, mid-answer or in the next turn's time to first token.
        room = len(job.prompt_ids) + job.max_new_tokens + _NEXT_TURN
        slot, reused = self._choose_slot(job.prompt_ids, room)
        slot.job, slot.sampler = job, TokenSampler(job.sampling)
        try:
            self.cache.ensure(slot.index, room, exact=True)
        except Exception as exc:
            logger.exception("no room in the cache")
            self._fail([slot], exc)
            return None
        return slot, reused

    def _prefilled(
        self, slot: _Slot, reused: int, logits: torch.Tensor, token: int | None = None
    ) -> None:
        """The slot's prompt is in the cache: its first token comes from ``logits`` [V]."""
        assert slot.job is not None
        slot.tokens = list(slot.job.prompt_ids)
        self.stats.prefilled_tokens += len(slot.tokens) - reused
        self.stats.reused_tokens += reused
        self._advance(slot, logits, token)

    def _decoded(self, slots: list[_Slot], logits: torch.Tensor, tokens: list[int | None]) -> None:
        """A decode step fed the slots' tokens: their next ones come from ``logits`` [B, V]."""
        if not slots:
            return
        self.stats.steps += 1
        self.stats.decoded_tokens += len(slots)
        self.stats.max_batch = max(self.stats.max_batch, len(slots))
        for i, slot in enumerate(slots):
            assert slot.next_token is not None
            slot.tokens.append(slot.next_token)
            self._advance(slot, logits[i], tokens[i])

    def _fail(self, slots: list[_Slot], error: BaseException) -> None:
        """A failed pass: its requests fail, and their slots' caches are no longer trusted."""
        for slot in slots:
            slot.tokens = []
            self.cache.release(slot.index)
            if slot.job is not None:
                slot.job.fail(error)
            self._release(slot, None)

    def _advance(self, slot: _Slot, logits: torch.Tensor, token: int | None = None) -> None:
        """Sample the slot's next token from ``logits`` [V] (unless already chosen: ``token``)
        and hand it to its job."""
        job, sampler = slot.job, slot.sampler
        assert job is not None
        assert sampler is not None
        try:
            if token is not None and token < 0:  # no finite probability in the row
                raise BrokenLogitsError()
            if token is None:
                if job.constraint is not None:  # no batched choice: masked here
                    job.constraint.mask_(logits)
                seen = (
                    torch.tensor(slot.tokens, dtype=torch.long)
                    if sampler.params.repetition_penalty != 1.0
                    else _NO_TOKENS
                )
                token = sampler(logits, seen)
            accepted = job.accept(token, job.score(logits, token))
        except Exception as exc:  # e.g. logits without a finite probability: this request alone
            logger.exception("choosing or handing over the next token failed")
            self._fail([slot], exc)
            return
        if accepted:
            slot.next_token = token
        else:
            self._release(slot, None)

    def _release(self, slot: _Slot, reason: FinishReason | None) -> None:
        if slot.job is not None and reason is not None:
            slot.job.finish(reason)
        slot.job = slot.sampler = slot.next_token = None
        slot.last_used = time.monotonic()

    def _choose_slot(self, prompt: list[int], room: int) -> tuple[_Slot, int]:
        """A free slot for ``prompt`` and how many of its tokens are already cached there. A
        slot whose rows are made anew gets ``room`` positions at once (one allocation, not a
        prefix's and then the answer's)."""
        limit = len(prompt) - 1  # the last prompt token must be fed to get its logits
        free = [s for s in self._slots if s.job is None]
        here = max(free, key=lambda s: (common_prefix_length(s.tokens, prompt), s.last_used))
        in_slot = min(common_prefix_length(here.tokens, prompt), limit)
        if not self.cache.holds_window(here.index, len(here.tokens), in_slot):
            in_slot = 0  # the sliding layers' ring has moved past that point
        stored, in_store = self.store.best_match(prompt, limit)
        empty = next((s for s in free if not s.tokens), None)
        if in_slot > 0 and in_slot >= in_store:
            if empty is None or len(here.tokens) - in_slot <= _WORTH_KEEPING:
                if len(here.tokens) - in_slot > _WORTH_KEEPING:
                    # Another conversation that shared only a beginning: kept in the store, and
                    # the memory its rest took beyond this turn's room handed back (rows no
                    # larger stay: the positions after the prefix are written before they are
                    # read, as in the short-tail case).
                    held = self.cache.read(here.index, len(here.tokens))
                    self.store.put(here.tokens, held)
                    if self.cache.holds_more_than(here.index, room):
                        self.cache.release(here.index)
                        self.cache.ensure(here.index, room, exact=True)
                        self.cache.write(here.index, held, in_slot)
                return here, in_slot
            # Another conversation's beginning (a system prompt, an edited history): copied to
            # an empty slot, and that conversation kept in its own.
            self.cache.ensure(empty.index, room, exact=True)
            self.cache.write(empty.index, self.cache.read(here.index, len(here.tokens)), in_slot)
            return empty, in_slot
        # Nothing better in place: the least recently used slot (an empty one first), its
        # content kept in the store.
        target = min(free, key=lambda s: (len(s.tokens) > 0, s.last_used))
        self._save(target)
        target.tokens = []
        self.cache.release(target.index)  # the next conversation grows its own
        if stored is not None and in_store > 0:
            self.cache.ensure(target.index, room, exact=True)
            self.cache.write(target.index, stored.kv, in_store)
            return target, in_store
        return target, 0

    def _save(self, slot: _Slot) -> None:
        """Copy the slot's keys and values to the prefix store (within its budget)."""
        if len(slot.tokens) > _WORTH_KEEPING:
            self.store.put(slot.tokens, self.cache.read(slot.index, len(slot.tokens)))

    def _abort_all(self) -> None:
        for slot in self._slots:
            self._release(slot, FinishReason.CANCELLED)
        while self._waiting:
            self._waiting.popleft().finish(FinishReason.CANCELLED)

    def info(self) -> dict[str, Any]:
        return {
            **self.stats.to_dict(),
            "active": self.active_count,
            "queued": self.queue_depth,
            "kv_cache_mb": round(self.cache.nbytes / 2**20, 2),
            # each slot's share: a long conversation grows its own
            "kv_cache_slots_mb": [
                round(self.cache.slot_nbytes(i) / 2**20, 2) for i in range(self.max_batch_size)
            ],
            "prefix_store_mb": round(self.store.nbytes / 2**20, 2),
            "prefix_store_entries": len(self.store),
        }


_NO_TOKENS = torch.empty(0, dtype=torch.long)
# Fewer tokens than this are cheaper to prefill again than to copy around.
_WORTH_KEEPING = 32
# A burst of requests reaching an idle engine: how long to wait for the next one, and for all.
_BURST_GAP = 0.0002
_BURST_LIMIT = 0.002
# Cache positions reserved beyond an answer, for the conversation's next message.
_NEXT_TURN = 256
