"""BatchScheduler admission: a burst of requests reaching an idle engine shares its first step;
a lone request is not held back for one."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import torch

from gemma_chat.infrastructure.llm.engine import scheduler as scheduler_module
from gemma_chat.infrastructure.llm.engine.config import Gemma3Config
from gemma_chat.infrastructure.llm.engine.kv_cache import KVCache
from gemma_chat.infrastructure.llm.engine.scheduler import BatchScheduler
from gemma_chat.infrastructure.llm.generation.job import GenerationJob
from gemma_chat.infrastructure.llm.generation.sampling import SamplingParams

CONFIG = Gemma3Config.from_hf(
    {
        "vocab_size": 16,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 6,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "rms_norm_eps": 1e-6,
        "sliding_window": 8,
        "query_pre_attn_scalar": 16,
        "max_position_embeddings": 1024,
    }
)


class RecordingModel:
    """Answers token 3 for every row; records each step's rows and when it started."""

    config = CONFIG
    takes_rows = True

    def __init__(self) -> None:
        self.steps: list[tuple[float, list[int]]] = []  # (start, each row's slot)

    def forward_rows(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor,
        cache: KVCache,
        wanted: list[int],
    ) -> torch.Tensor:
        self.steps.append((time.monotonic(), slots.tolist()))
        logits = torch.zeros((len(wanted), CONFIG.vocab_size))
        logits[:, 3] = 1.0
        return logits

    def argmax(self, logits: torch.Tensor) -> list[int]:
        return [int(i) for i in logits.argmax(dim=-1)]


def job(prompt: list[int], done: threading.Event, tokens: int = 4) -> GenerationJob:
    def emit(item: Any) -> None:
        if isinstance(item, BaseException) or item.finish_reason is not None:
            done.set()

    return GenerationJob(
        prompt_ids=prompt,
        sampling=SamplingParams(temperature=0.0),
        max_new_tokens=tokens,
        stop=(),
        end_ids=frozenset(),
        decode=lambda ids: "x" * len(ids),
        emit=emit,
    )


def scheduler(model: RecordingModel) -> BatchScheduler:
    return BatchScheduler(
        model,  # type: ignore[arg-type]
        max_batch_size=8,
        dtype=torch.float32,
        prefix_budget_bytes=0,
    )


def test_requests_submitted_together_to_an_idle_engine_share_its_first_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Gaps this long never end the burst here, whatever the machine's load: the burst ends
    # when the eighth request fills the batch.
    monkeypatch.setattr(scheduler_module, "_BURST_GAP", 5.0)
    monkeypatch.setattr(scheduler_module, "_BURST_LIMIT", 10.0)
    model = RecordingModel()
    engine = scheduler(model)
    try:
        done = [threading.Event() for _ in range(8)]
        for i, event in enumerate(done):  # one after another from this thread, as a gather does
            engine.submit(job([1, 2, 5 + i], event))
            time.sleep(0.00002)
        assert all(event.wait(10) for event in done)
        first_step_slots = set(model.steps[0][1])
        assert len(first_step_slots) == 8  # every prompt in the first pass
        assert len(model.steps) == 4  # 4 tokens each: one prefill step, three decode steps
    finally:
        engine.close()


def test_a_lone_request_starts_without_waiting_for_company() -> None:
    model = RecordingModel()
    engine = scheduler(model)
    try:
        done = threading.Event()
        engine.submit(job([1, 2, 3], done))
        assert done.wait(10)  # the burst's wait ends when no other request comes
        assert [slots for _, slots in model.steps] == [[0, 0, 0], [0], [0], [0]]
    finally:
        engine.close()
