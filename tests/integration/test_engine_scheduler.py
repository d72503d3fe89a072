"""The native engine: continuous batching, KV reuse between turns, and its converted-model cache.

On the tiny model in float32, where a token's logits do not depend on the batch it decodes in.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from gemma_chat import ChatSession, GemmaLLM, GenerationConfig, InferenceService, get_settings
from gemma_chat.infrastructure.llm.engine.model import Gemma3Model
from gemma_chat.infrastructure.llm.engine.prefix_store import common_prefix_length
from gemma_chat.infrastructure.llm.engine.scheduler import BatchScheduler

GREEDY = GenerationConfig(temperature=0.0, max_new_tokens=40)
PROMPTS = [
    "Hello there",
    "What is the capital of France?",
    "Once upon a time",
    "The quick brown fox",
    "Tell me about UTF-8",
]


def engine_llm(directory: Path, quantization: str = "auto", **performance: Any) -> GemmaLLM:
    model = {"name": str(directory), "dtype": "float32", "context_length": 4096}
    return GemmaLLM(
        get_settings(
            model={**model, "quantization": quantization},
            performance={"engine": "native", **performance},
        )
    )


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def scheduler_info(llm: GemmaLLM) -> dict[str, Any]:
    info: dict[str, Any] = llm.get_model_info()["scheduler"]
    return info


@pytest.mark.asyncio
@pytest.mark.parametrize("quantization", ["auto", "none"])  # int8 (fused rows) and float32
async def test_concurrent_requests_share_decode_steps_and_answer_as_they_would_alone(
    tiny_model_dir: Path, quantization: str
) -> None:
    alone_llm = engine_llm(tiny_model_dir, max_batch_size=1, quantization=quantization)
    await alone_llm.load()
    alone = [(await alone_llm.generate(chat(p), GREEDY)).text for p in PROMPTS]
    llm = engine_llm(tiny_model_dir, max_batch_size=8, quantization=quantization)
    await llm.load()
    assert llm.get_model_info()["weights"] == ("q8" if quantization == "auto" else "float32")
    together = await asyncio.gather(*(llm.generate(chat(p), GREEDY) for p in PROMPTS))
    assert [c.text for c in together] == alone
    assert scheduler_info(llm)["max_batch"] > 1
    assert scheduler_info(alone_llm)["max_batch"] == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("quantization", ["auto", "none"])
async def test_seeded_sampling_answers_the_same_batched_or_alone(
    tiny_model_dir: Path, quantization: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Batched, rows that sample from their top k get their candidates from one top-k over the
    # batch, with their repetition penalty applied in place first; the reference runs alone
    # with every row through the sampler's own whole-row path.
    configs = [
        GenerationConfig(
            temperature=t, top_k=k, top_p=p, repetition_penalty=r, seed=s, max_new_tokens=24
        )
        for t, k, p, r, s in [
            (0.9, 64, 0.95, 1.0, 1),
            (0.9, 5, 1.0, 1.0, 2),
            (0.9, 0, 0.9, 1.0, 3),
            (0.9, 0, 1.0, 1.0, 4),
            (0.9, 64, 0.95, 1.3, 5),  # the penalty applied to the batch's logits rows
            (0.0, 64, 1.0, 1.3, 6),
        ]
    ]
    whole_rows = monkeypatch.context()
    with whole_rows as patch:
        patch.setattr(
            BatchScheduler, "_chosen_tokens", lambda self, logits, slots, seen: [None] * len(slots)
        )
        alone_llm = engine_llm(tiny_model_dir, max_batch_size=1, quantization=quantization)
        await alone_llm.load()
        alone = [
            (await alone_llm.generate(chat(p), c)).text
            for p, c in zip([*PROMPTS, "One more prompt"], configs, strict=True)
        ]
        await alone_llm.unload()
    llm = engine_llm(tiny_model_dir, max_batch_size=8, quantization=quantization)
    await llm.load()
    together = await asyncio.gather(
        *(
            llm.generate(chat(p), c)
            for p, c in zip([*PROMPTS, "One more prompt"], configs, strict=True)
        )
    )
    assert [c.text for c in together] == alone
    assert scheduler_info(llm)["max_batch"] > 1
    assert len(set(alone)) > 1


@pytest.mark.asyncio
@pytest.mark.parametrize("temperature", [0.8, 0.0])  # batched top-k, batched argmax
async def test_a_request_whose_logits_are_broken_fails_alone(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, temperature: float
) -> None:
    from gemma_chat import InferenceError

    llm = engine_llm(tiny_model_dir, max_batch_size=8)
    await llm.load()
    forward_rows = Gemma3Model.forward_rows

    def broken_first_row(self: Gemma3Model, *args: Any) -> Any:
        logits = forward_rows(self, *args)
        if logits.shape[0] == 2:  # the first step of the two requests: break the sampled one's
            logits[1] = float("nan")
        return logits

    monkeypatch.setattr(Gemma3Model, "forward_rows", broken_first_row)
    config = GenerationConfig(temperature=temperature, top_k=20, seed=1, max_new_tokens=8)
    greedy, broken = await asyncio.gather(
        llm.generate(chat(PROMPTS[0]), GREEDY),
        llm.generate(chat(PROMPTS[1]), config),
        return_exceptions=True,
    )
    assert isinstance(broken, InferenceError)
    assert "no finite probability" in str(broken)
    assert not isinstance(greedy, BaseException)
    assert greedy.token_usage.completion_tokens > 0
    for _ in range(100):  # the slot is released just after the final chunk is handed over
        if scheduler_info(llm)["active"] == 0:
            break
        await asyncio.sleep(0.01)
    assert scheduler_info(llm)["active"] == 0


@pytest.mark.asyncio
async def test_an_unexpected_error_in_a_step_fails_its_requests_and_the_engine_goes_on(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gemma_chat import InferenceError

    llm = engine_llm(tiny_model_dir, max_batch_size=8)
    await llm.load()
    chosen_tokens = BatchScheduler._chosen_tokens
    calls = 0

    def fails_once(self: BatchScheduler, *args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug in the step")
        return chosen_tokens(self, *args)

    monkeypatch.setattr(BatchScheduler, "_chosen_tokens", fails_once)
    with pytest.raises(InferenceError, match="a bug in the step"):
        await asyncio.wait_for(llm.generate(chat(PROMPTS[0]), GREEDY), timeout=30)
    again = await asyncio.wait_for(llm.generate(chat(PROMPTS[0]), GREEDY), timeout=30)
    assert again.token_usage.completion_tokens > 0


@pytest.mark.asyncio
@pytest.mark.parametrize("quantization", ["auto", "none"])
async def test_requests_join_and_leave_mid_flight(tiny_model_dir: Path, quantization: str) -> None:
    llm = engine_llm(tiny_model_dir, quantization)
    await llm.load()
    long_config = GenerationConfig(temperature=0, max_new_tokens=150)
    short_config = GenerationConfig(temperature=0, max_new_tokens=5)
    expected_long = (await llm.generate(chat("long one"), long_config)).text
    expected_short = (await llm.generate(chat("short one"), short_config)).text

    finished: list[str] = []
    long_parts: list[str] = []
    under_way = asyncio.Event()

    async def run_long() -> None:
        async for chunk in llm.stream(chat("long one"), long_config):
            long_parts.append(chunk.text)
            if len(long_parts) == 10:
                under_way.set()
        finished.append("long")

    task = asyncio.create_task(run_long())
    await under_way.wait()
    short = await llm.generate(chat("short one"), short_config)
    finished.append("short")
    await task
    assert short.text == expected_short
    assert "".join(long_parts) == expected_long
    assert finished == ["short", "long"]


@pytest.mark.asyncio
async def test_a_cancelled_request_leaves_the_others_untouched(tiny_model_dir: Path) -> None:
    llm = engine_llm(tiny_model_dir)
    await llm.load()
    config = GenerationConfig(temperature=0, max_new_tokens=60)
    expected = (await llm.generate(chat(PROMPTS[0]), config)).text
    started = asyncio.Event()

    async def doomed_consumer() -> None:
        async for _ in llm.stream(chat(PROMPTS[1]), config):
            started.set()
            await asyncio.Event().wait()  # still reading when cancelled, however fast the model

    doomed = asyncio.create_task(doomed_consumer())
    survivor = asyncio.create_task(llm.generate(chat(PROMPTS[0]), config))
    await started.wait()
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert (await survivor).text == expected
    await asyncio.sleep(0.05)
    assert scheduler_info(llm)["active"] == 0


@pytest.mark.asyncio
async def test_a_slow_consumer_does_not_stall_the_others(tiny_model_dir: Path) -> None:
    llm = engine_llm(tiny_model_dir)
    await llm.load()
    config = GenerationConfig(temperature=0, max_new_tokens=60)
    slow = llm.stream(chat(PROMPTS[2]), config)
    first = await anext(slow)  # then not read for a while
    fast = await asyncio.wait_for(llm.generate(chat(PROMPTS[3]), config), timeout=10)
    assert fast.token_usage.completion_tokens > 0
    rest = [c.text async for c in slow]
    alone = (await llm.generate(chat(PROMPTS[2]), config)).text
    assert first.text + "".join(rest) == alone


@pytest.mark.asyncio
@pytest.mark.parametrize("quantization", ["auto", "none"])
async def test_the_next_turn_reuses_the_cached_conversation_and_answers_the_same(
    tiny_model_dir: Path, quantization: str
) -> None:
    settings = get_settings(
        model={
            "name": str(tiny_model_dir),
            "dtype": "float32",
            "temperature": 0,
            "quantization": quantization,
        },
        performance={"engine": "native"},
        cache={"enabled": False},
    )
    session = ChatSession(system_prompt="Be brief.")
    async with InferenceService(settings) as service:
        first = await service.generate_response(session, "first question", max_new_tokens=20)
        before = scheduler_info(service.llm)["reused_tokens"]  # type: ignore[arg-type]
        second = await service.generate_response(session, "second one", max_new_tokens=20)
        reused = scheduler_info(service.llm)["reused_tokens"] - before  # type: ignore[arg-type]
    history = session.to_chat_messages()[:-1]
    fresh = engine_llm(tiny_model_dir, quantization)
    await fresh.load()
    recomputed = await fresh.generate(history, GenerationConfig(temperature=0, max_new_tokens=20))
    # At least the whole first prompt; the answer too where it re-tokenizes the same way.
    assert reused >= first.token_usage.prompt_tokens - 1
    assert second.content == recomputed.text


@pytest.mark.asyncio
async def test_an_edited_history_reuses_only_the_unchanged_prefix(tiny_model_dir: Path) -> None:
    llm = engine_llm(tiny_model_dir)
    await llm.load()
    original = [*chat("a question about cats"), {"role": "assistant", "content": "cats purr"}]
    edited = [*chat("a question about dogs"), {"role": "assistant", "content": "cats purr"}]
    follow_up = chat("and then?")
    await llm.generate(original + follow_up, GREEDY)
    before = scheduler_info(llm)["reused_tokens"]
    answer = await llm.generate(edited + follow_up, GREEDY)
    reused = scheduler_info(llm)["reused_tokens"] - before
    fresh = engine_llm(tiny_model_dir)
    await fresh.load()
    tokenizer: Any = llm._generator.tokenizer  # type: ignore[union-attr]
    common = common_prefix_length(
        tokenizer.encode(llm.format_prompt(edited + follow_up)),
        tokenizer.encode(llm.format_prompt(original + follow_up)),
    )
    assert 0 < reused <= common
    assert answer.text == (await fresh.generate(edited + follow_up, GREEDY)).text


@pytest.mark.asyncio
async def test_evicted_conversations_move_to_the_prefix_store_within_its_budget(
    tiny_model_dir: Path,
) -> None:
    llm = engine_llm(tiny_model_dir, max_batch_size=1, kv_cache_budget_mb=1)
    await llm.load()
    a, b = chat("conversation A " * 3), chat("conversation B " * 3)
    first_a = await llm.generate(a, GREEDY)
    await llm.generate(b, GREEDY)  # takes the only slot: A moves to the store
    info = scheduler_info(llm)
    assert info["prefix_store_entries"] == 1
    assert 0 < info["prefix_store_mb"] <= 1
    before = info["reused_tokens"]
    again_a = await llm.generate(a, GREEDY)  # A comes back from the store
    assert scheduler_info(llm)["reused_tokens"] > before
    assert again_a.text == first_a.text


@pytest.mark.asyncio
async def test_a_zero_budget_keeps_nothing_but_still_answers(tiny_model_dir: Path) -> None:
    llm = engine_llm(tiny_model_dir, max_batch_size=1, kv_cache_budget_mb=0)
    await llm.load()
    first = await llm.generate(chat("A"), GREEDY)
    await llm.generate(chat("B"), GREEDY)
    assert scheduler_info(llm)["prefix_store_entries"] == 0
    assert (await llm.generate(chat("A"), GREEDY)).text == first.text


@pytest.mark.asyncio
async def test_a_corrupt_converted_model_is_detected_and_rebuilt(
    tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    llm = engine_llm(tiny_model_dir)
    await llm.load()
    expected = (await llm.generate(chat("hi"), GREEDY)).text
    directory = Path(llm.get_model_info()["converted_cache"])
    await llm.unload()
    weights = directory / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one flipped byte
    weights.write_bytes(bytes(data))
    again = engine_llm(tiny_model_dir)
    with caplog.at_level(logging.WARNING):
        await again.load()
    assert "checksum" in caplog.text
    assert (await again.generate(chat("hi"), GREEDY)).text == expected
    (directory / "manifest.json").unlink()  # a conversion that never finished
    third = engine_llm(tiny_model_dir)
    await third.load()
    assert (directory / "manifest.json").is_file()
    assert (await third.generate(chat("hi"), GREEDY)).text == expected


@pytest.mark.asyncio
async def test_a_timed_out_request_frees_its_batch_slot(tiny_model_dir: Path) -> None:
    from gemma_chat import GenerationTimeoutError

    settings = get_settings(
        model={"name": str(tiny_model_dir), "context_length": 8192},
        limits={"request_timeout_seconds": 0.2},
    )
    async with InferenceService(settings) as service:
        with pytest.raises(GenerationTimeoutError):
            # Greedy on this seeded model: 4,000 tokens without an end of turn (~1 s).
            await service.generate_response(
                ChatSession(), "keep going", temperature=0, max_new_tokens=4000
            )
        # Freed at the engine's next step: wait for it without betting on a busy machine's speed.
        deadline = time.monotonic() + 10
        while scheduler_info(service.llm)["active"] != 0:  # type: ignore[arg-type]
            assert time.monotonic() < deadline, "the timed-out request still holds its slot"
            await asyncio.sleep(0.02)
        answer = await service.generate_response(ChatSession(), "short", max_new_tokens=3)
    assert answer.token_usage.completion_tokens <= 3


@pytest.mark.asyncio
async def test_a_new_conversion_removes_the_entries_older_versions_wrote(
    tiny_model_dir: Path,
) -> None:
    llm = engine_llm(tiny_model_dir)
    await llm.load()
    directory = Path(llm.get_model_info()["converted_cache"])
    await llm.unload()
    stem = directory.name.rsplit("-v", 1)[0]
    older = directory.parent / f"{stem}-v0"
    other_format = directory.parent / f"{stem}x-v0"
    older.mkdir()
    other_format.mkdir()
    shutil.rmtree(directory)  # converted again below
    again = engine_llm(tiny_model_dir)
    await again.load()
    # the new entry is there, the older version's is gone, another model's or format's is kept
    assert present(directory, older, other_format) == [True, False, True]


def present(*paths: Path) -> list[bool]:
    return [path.exists() for path in paths]


@pytest.mark.asyncio
async def test_an_idle_engine_gives_its_kv_memory_back_and_conversations_still_reuse_it(
    tiny_model_dir: Path,
) -> None:
    llm = engine_llm(tiny_model_dir, max_batch_size=8, kv_idle_release_seconds=0.3)
    await llm.load()
    empty = scheduler_info(llm)["kv_cache_mb"]
    conversations = [chat(f"conversation {i} " * 40) for i in range(8)]
    first = await asyncio.gather(*(llm.generate(c, GREEDY) for c in conversations))
    assert scheduler_info(llm)["kv_cache_mb"] > empty
    deadline = time.monotonic() + 10
    while scheduler_info(llm)["kv_cache_mb"] != empty:
        assert time.monotonic() < deadline, "the idle engine kept its grown KV cache"
        await asyncio.sleep(0.05)
    info = scheduler_info(llm)
    assert info["prefix_store_entries"] == 8  # every conversation kept, within the budget
    again = await llm.generate(conversations[3], GREEDY)
    assert scheduler_info(llm)["reused_tokens"] > info["reused_tokens"]
    assert again.text == first[3].text
    await llm.unload()


def slot_bytes(llm: GemmaLLM) -> list[int]:
    cache = llm._generator.scheduler.cache  # type: ignore[union-attr]
    return [cache.slot_nbytes(i) for i in range(cache.max_slots)]


@pytest.mark.asyncio
async def test_a_long_conversation_grows_only_its_own_slot_and_gives_it_back_when_evicted(
    tiny_model_dir: Path,
) -> None:
    llm = engine_llm(tiny_model_dir, max_batch_size=2, kv_cache_budget_mb=0)
    await llm.load()
    await llm.generate(chat("short one"), GREEDY)
    before = slot_bytes(llm)
    short = next(i for i, size in enumerate(before) if size > 0)
    assert before[1 - short] == 0  # an unused slot holds nothing
    long = GenerationConfig(temperature=0.0, max_new_tokens=1000)
    await llm.generate(chat("a long story " * 150), long)
    grown = slot_bytes(llm)
    assert grown[short] == before[short]  # the long conversation cost the short one nothing
    assert grown[1 - short] > 2 * grown[short]
    assert scheduler_info(llm)["kv_cache_slots_mb"][1 - short] > 0
    await llm.unload()

    # One slot: a new conversation takes the long one's over, and its memory comes back.
    one = engine_llm(tiny_model_dir, max_batch_size=1, kv_cache_budget_mb=0)
    await one.load()
    await one.generate(chat("a long story " * 150), long)
    long_mb = scheduler_info(one)["kv_cache_mb"]
    await one.generate(chat("Hello there"), GREEDY)
    assert scheduler_info(one)["kv_cache_mb"] < long_mb / 2
    assert scheduler_info(one)["kv_cache_mb"] == round(sum(slot_bytes(one)) / 2**20, 2)
    await one.unload()


@pytest.mark.asyncio
@pytest.mark.parametrize("quantization", ["auto", "none"])  # int8 (fused rows) and float32
async def test_a_conversation_past_the_sliding_layers_ring_is_reused_and_answers_as_recomputed(
    tiny_model_dir: Path, quantization: str
) -> None:
    # The tiny model's window is 64 positions: a ring of 320 (window + one 256-token chunk).
    llm = engine_llm(tiny_model_dir, max_batch_size=2, quantization=quantization)
    await llm.load()
    long = GenerationConfig(temperature=0.0, max_new_tokens=120)
    history = chat("tell me everything you know " * 70)
    first = await llm.generate(history, long)
    ring = llm._generator.scheduler.cache.ring  # type: ignore[union-attr]
    assert first.token_usage.prompt_tokens > ring  # prefilled in passes, the ring wrapped
    turn = [*history, {"role": "assistant", "content": first.text}, *chat("and more " * 10)]
    before = scheduler_info(llm)["reused_tokens"]
    answer = await llm.generate(turn, long)
    assert scheduler_info(llm)["reused_tokens"] - before > ring
    fresh = engine_llm(tiny_model_dir, max_batch_size=1, quantization=quantization)
    await fresh.load()
    assert (await fresh.generate(turn, long)).text == answer.text
    await fresh.generate(chat("something else"), GREEDY)  # the turn moves to the store
    again = await fresh.generate(turn, long)  # and comes back from it
    assert again.text == answer.text
    await llm.unload()
    await fresh.unload()


@pytest.mark.asyncio
@pytest.mark.parametrize("quantization", ["auto", "none"])
async def test_a_prompt_asked_again_continues_from_its_slot_in_place_and_answers_the_same(
    tiny_model_dir: Path, quantization: str
) -> None:
    # The second request finds its prompt in the slot of the first, followed by an answer longer
    # than is worth keeping there: that conversation goes to the store, and the slot, no larger
    # than the new turn needs, keeps its rows (the answer's positions are written over).
    llm = engine_llm(tiny_model_dir, max_batch_size=1, quantization=quantization)
    await llm.load()
    config = GenerationConfig(temperature=0.0, max_new_tokens=48)
    first = await llm.generate(chat("Once upon a time"), config)
    assert first.token_usage.completion_tokens > 32  # a tail beyond _WORTH_KEEPING
    before = scheduler_info(llm)
    again = await llm.generate(chat("Once upon a time"), config)
    after = scheduler_info(llm)
    assert after["reused_tokens"] - before["reused_tokens"] == first.token_usage.prompt_tokens - 1
    assert after["prefix_store_entries"] == before["prefix_store_entries"] + 1
    assert again.text == first.text
    third = await llm.generate(chat("Once upon a time, again"), config)
    fresh = engine_llm(tiny_model_dir, quantization=quantization)
    await fresh.load()
    assert third.text == (await fresh.generate(chat("Once upon a time, again"), config)).text
