"""The native engine on the embedded Gemma 3 270M: batching, KV reuse and the converted cache.

The same properties as on the tiny model (test_engine_scheduler.py), on the real weights: under
greedy decoding an answer is the same alone, batched, joined mid-flight, beside a cancelled
request, after a reused or evicted conversation, and recomputed from scratch.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from gemma_chat import GemmaLLM, GenerationConfig, get_settings
from gemma_chat.domain.errors import CorruptEntryError
from gemma_chat.infrastructure.llm.engine.converted_store import verify

pytestmark = pytest.mark.slow

GREEDY = GenerationConfig(temperature=0, max_new_tokens=24)
# Gemma's turn format: the base model writes until the limit, so every request decodes 24
# tokens and the requests really overlap.
PROMPTS = [
    "Write a story about a dragon.",
    "List some fruits.",
    "Describe the sea.",
    "Explain how a bicycle works.",
]


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def engine(cache_dir: Path, **performance: Any) -> GemmaLLM:
    """The embedded model in Gemma's turn format, from the converted copy the session's
    ``embedded_llm`` made (about 2 s to load; not converted again per test)."""
    return GemmaLLM(
        get_settings(
            cache_dir=str(cache_dir),
            model={"chat_format": "gemma"},
            performance={"engine": "native", **performance},
        )
    )


@pytest.fixture
def cache_dir(embedded_llm: GemmaLLM) -> Path:
    return Path(embedded_llm.settings.cache_dir)


@pytest_asyncio.fixture(loop_scope="function")
async def llm(cache_dir: Path) -> AsyncIterator[GemmaLLM]:
    loaded = engine(cache_dir, max_batch_size=4)
    await loaded.load()
    yield loaded
    await loaded.unload()


def scheduler(llm: GemmaLLM) -> dict[str, Any]:
    info: dict[str, Any] = llm.get_model_info()["scheduler"]
    return info


@pytest.mark.asyncio
async def test_batched_joined_and_cancelled_requests_answer_as_they_do_alone(
    llm: GemmaLLM,
) -> None:
    alone = [(await llm.generate(chat(p), GREEDY)).text for p in PROMPTS]
    together = await asyncio.gather(*(llm.generate(chat(p), GREEDY) for p in PROMPTS[:3]))
    assert [c.text for c in together] == alone[:3]
    assert scheduler(llm)["max_batch"] >= 2

    # One request joins another mid-flight; a third is cancelled while both run.
    long = GenerationConfig(temperature=0, max_new_tokens=60)
    expected_long = (await llm.generate(chat(PROMPTS[0]), long)).text
    started = asyncio.Event()
    parts: list[str] = []

    async def run_long() -> None:
        async for chunk in llm.stream(chat(PROMPTS[0]), long):
            parts.append(chunk.text)
            started.set()

    async def doomed() -> None:
        async for _ in llm.stream(chat(PROMPTS[2]), long):
            await asyncio.Event().wait()  # still reading when cancelled

    runner = asyncio.create_task(run_long())
    await started.wait()
    victim = asyncio.create_task(doomed())
    joined = await llm.generate(chat(PROMPTS[3]), GREEDY)
    victim.cancel()
    with pytest.raises(asyncio.CancelledError):
        await victim
    await runner
    assert joined.text == alone[3]
    assert "".join(parts) == expected_long


@pytest.mark.asyncio
async def test_a_next_turn_reuses_the_conversation_and_answers_as_recomputed(
    llm: GemmaLLM, cache_dir: Path
) -> None:
    history = chat(PROMPTS[1])
    first = await llm.generate(history, GREEDY)
    turn = [*history, {"role": "assistant", "content": first.text}, *chat("And vegetables?")]
    before = scheduler(llm)["reused_tokens"]
    reused = await llm.generate(turn, GREEDY)
    assert scheduler(llm)["reused_tokens"] - before >= first.token_usage.prompt_tokens - 1
    # An edited history: only the unchanged prefix is reused, the rest prefilled again.
    edited = [*chat(PROMPTS[2]), {"role": "assistant", "content": first.text}, *chat("Why?")]
    edited_answer = await llm.generate(edited, GREEDY)

    fresh = engine(cache_dir, max_batch_size=1)
    await fresh.load()
    try:
        assert (await fresh.generate(turn, GREEDY)).text == reused.text
        await fresh.generate(chat("Something else entirely."), GREEDY)  # evicts the slot
        assert (await fresh.generate(edited, GREEDY)).text == edited_answer.text
    finally:
        await fresh.unload()


@pytest.mark.asyncio
async def test_conversations_evicted_to_the_prefix_store_come_back_the_same(
    cache_dir: Path,
) -> None:
    llm = engine(cache_dir, max_batch_size=1, kv_cache_budget_mb=64)
    await llm.load()
    try:
        first = await llm.generate(chat(PROMPTS[0]), GREEDY)
        await llm.generate(chat(PROMPTS[1]), GREEDY)  # takes the only slot: the first is stored
        assert scheduler(llm)["prefix_store_entries"] >= 1
        before = scheduler(llm)["reused_tokens"]
        again = await llm.generate(chat(PROMPTS[0]), GREEDY)
        assert scheduler(llm)["reused_tokens"] > before
        assert again.text == first.text
    finally:
        await llm.unload()


def test_a_corrupt_copy_of_the_converted_model_is_detected(
    embedded_llm: GemmaLLM, tmp_path: Path
) -> None:
    # Rebuilding converts the GGUF again (~50 s): the tiny model's test covers the rebuild;
    # here, detection on the real entry's files.
    loop: Any = embedded_llm._generator
    copy = tmp_path / "entry"
    shutil.copytree(loop.directory, copy)
    verify(copy)
    with (copy / "weights.safetensors").open("r+b") as weights:
        weights.seek(weights.seek(0, 2) // 2)
        byte = weights.read(1)
        weights.seek(-1, 1)
        weights.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(CorruptEntryError, match="checksum"):
        verify(copy)


@pytest.mark.asyncio
async def test_a_conversation_past_the_sliding_window_reuses_its_keys_and_answers_as_recomputed(
    llm: GemmaLLM, cache_dir: Path
) -> None:
    # Past the 512-position window and its ring (window + one 256-token pass): the sliding
    # layers hold only their last positions, the global layers every one.
    history = chat("Here is a long list of facts about the sea and its creatures. " * 70)
    first = await llm.generate(history, GREEDY)
    ring = llm._generator.scheduler.cache.ring  # type: ignore[union-attr]
    assert first.token_usage.prompt_tokens > ring
    turn = [*history, {"role": "assistant", "content": first.text}, *chat("Summarise it.")]
    before = scheduler(llm)["reused_tokens"]
    answer = await llm.generate(turn, GREEDY)
    assert scheduler(llm)["reused_tokens"] - before > ring
    fresh = engine(cache_dir, max_batch_size=1)
    await fresh.load()
    try:
        assert (await fresh.generate(turn, GREEDY)).text == answer.text
    finally:
        await fresh.unload()
