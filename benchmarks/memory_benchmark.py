#!/usr/bin/env python3
"""Memory against sessions and history length on the embedded model: peak RSS and the KV cache.

    python benchmarks/memory_benchmark.py [--sessions 1 4 8 16] [--contexts 500 1000 2000 4000]
                                          [--max-batch-size 16] [--out benchmarks/results]

Each point runs in a process of its own, so that its peak RSS (VmHWM) is its own: the embedded
model is loaded (int8 where the kernels run), then S sessions, each with a history of C tokens
(different texts: nothing shared to reuse), ask for a next turn at once (16 greedy tokens), then
each asks once more (its history reused). Written: a table (printed, and memory.md), memory.json
and memory.png in --out; with the default --out, the plot is also copied to
benchmarks/figures/memory.png (the README's), so a run of a few points elsewhere leaves it
alone. Needs matplotlib.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path
from typing import Any

from machine import cpu_flags  # benchmarks/machine.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results"
ANSWER_TOKENS = 16


def words() -> list[str]:
    """Text to build histories from: CPython's LICENSE, present wherever Python is."""
    for path in (
        Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt",
        Path(sys.base_prefix)
        / "lib"
        / f"python{sys.version_info[0]}.{sys.version_info[1]}"
        / "LICENSE.txt",
    ):
        if path.is_file():
            return path.read_text().split()
    return ("the quick brown fox jumps over the lazy dog " * 500).split()


def status_kb(field: str) -> float:
    match = re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    return float(match.group(1)) if match else 0.0


async def measure_point(sessions: int, context: int, max_batch_size: int) -> dict[str, Any]:
    from gemma_chat import GemmaLLM, GenerationConfig, get_settings

    llm = GemmaLLM(get_settings(performance={"max_batch_size": max_batch_size}))
    await llm.load()
    loaded_rss = status_kb("VmRSS") / 2**20
    text = words()

    def history(session: int) -> list[dict[str, str]]:
        """A user message of about ``context`` tokens, its own text for each session."""
        start = (session * 997) % len(text)

        def message(n: int) -> list[dict[str, str]]:
            taken = [text[(start + i) % len(text)] for i in range(n)]
            return [{"role": "user", "content": f"Session {session}. " + " ".join(taken)}]

        low, high = 1, 4 * context
        while low < high:  # the most words whose prompt is at most ``context`` tokens
            mid = (low + high + 1) // 2
            if llm.count_tokens(llm.format_prompt(message(mid))) <= context:  # type: ignore[arg-type]
                low = mid
            else:
                high = mid - 1
        return message(low)

    histories = [history(i) for i in range(sessions)]
    greedy = GenerationConfig(temperature=0.0, max_new_tokens=ANSWER_TOKENS)
    answers = await asyncio.gather(*(llm.generate(h, greedy) for h in histories))  # type: ignore[arg-type]
    turns = [
        [*h, {"role": "assistant", "content": a.text}, {"role": "user", "content": "Go on."}]
        for h, a in zip(histories, answers, strict=True)
    ]
    await asyncio.gather(*(llm.generate(t, greedy) for t in turns))  # type: ignore[arg-type]
    info = llm.get_model_info()
    scheduler = info["scheduler"]
    await llm.unload()
    return {
        "sessions": sessions,
        "context": context,
        "prompt_tokens": sum(a.token_usage.prompt_tokens for a in answers) / sessions,
        "peak_rss_gb": status_kb("VmHWM") / 2**20,
        "loaded_rss_gb": loaded_rss,
        "kv_cache_mb": scheduler["kv_cache_mb"],
        "prefix_store_mb": scheduler["prefix_store_mb"],
        "reused_tokens": scheduler["reused_tokens"],
        "weights": info.get("weights"),
        "kernels": info.get("kernels"),
        "max_batch_size": max_batch_size,
    }


def run_point(sessions: int, context: int, max_batch_size: int) -> dict[str, Any]:
    """One point in a fresh process (peaks do not mix)."""
    done = subprocess.run(
        [
            *(sys.executable, __file__, "--point", str(sessions), str(context)),
            *("--max-batch-size", str(max_batch_size)),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"point {sessions}x{context} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def table(points: list[dict[str, Any]]) -> str:
    lines = [
        "| sessions | history tokens | peak RSS (GB) | RSS after load (GB) | kv_cache_mb "
        "| prefix store (MB) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        lines.append(
            f"| {p['sessions']} | {p['context']} | {p['peak_rss_gb']:.2f} | "
            f"{p['loaded_rss_gb']:.2f} | {p['kv_cache_mb']:.0f} | {p['prefix_store_mb']:.0f} |"
        )
    return "\n".join(lines)


def plot(points: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (rss_axes, kv_axes) = plt.subplots(1, 2, figsize=(11, 4.2))
    for sessions in sorted({p["sessions"] for p in points}):
        mine = sorted((p for p in points if p["sessions"] == sessions), key=lambda p: p["context"])
        contexts = [p["context"] for p in mine]
        label = f"{sessions} session{'s' if sessions > 1 else ''}"
        rss_axes.plot(contexts, [p["peak_rss_gb"] for p in mine], marker="o", label=label)
        kv_axes.plot(contexts, [p["kv_cache_mb"] for p in mine], marker="o", label=label)
    rss_axes.axhline(1.2, color="grey", linestyle="--", linewidth=1, label="1.2 GB target")
    rss_axes.set(xlabel="history tokens per session", ylabel="peak RSS (GB)", ylim=(0, None))
    kv_axes.set(xlabel="history tokens per session", ylabel="kv_cache_mb", ylim=(0, None))
    rss_axes.set_title("peak RSS of the process")
    kv_axes.set_title("KV cache after the turns")
    for axes in (rss_axes, kv_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(textwrap.fill(title, 150), fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--contexts", type=int, nargs="+", default=[500, 1000, 2000, 4000])
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--plot-only", action="store_true", help="plot --out's memory.json again")
    parser.add_argument("--point", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:
        print(json.dumps(asyncio.run(measure_point(*args.point, args.max_batch_size))))
        return

    if args.plot_only:
        saved = json.loads((args.out / "memory.json").read_text())
        cpu, variant, points = saved["cpu"], saved["kernel_variant"], saved["points"]
    else:
        points = []
        for sessions in args.sessions:
            for context in args.contexts:
                point = run_point(sessions, context, args.max_batch_size)
                points.append(point)
                print(
                    f"{sessions:>3} sessions x {context:>5} tokens: peak RSS "
                    f"{point['peak_rss_gb']:.2f} GB, kv_cache_mb {point['kv_cache_mb']:.0f}",
                    flush=True,
                )
        cpu = cpu_flags()
        variant = points[0]["kernels"] if points else None
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "memory.json").write_text(
            json.dumps({"cpu": cpu, "kernel_variant": variant, "points": points}, indent=1)
        )
    text = table(points)
    (args.out / "memory.md").write_text(f"{cpu}; kernels: {variant}\n\n{text}\n")
    print(f"\n{cpu}; kernels: {variant}\n\n{text}")
    png = args.out / "memory.png"
    plot(points, png, f"gemma-chat, embedded model ({points[0]['weights']}, {variant}); {cpu}")
    print(f"\nwrote {args.out / 'memory.json'} and {png}")
    if args.out.resolve() == DEFAULT_OUT.resolve():
        figures = ROOT / "benchmarks" / "figures"
        figures.mkdir(parents=True, exist_ok=True)
        shutil.copy(png, figures / "memory.png")
        print(f"copied the plot to {figures / 'memory.png'}")


if __name__ == "__main__":
    main()
