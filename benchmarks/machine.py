"""The CPU a benchmark ran on, as every figure is written beside it (shared by the scripts)."""

from __future__ import annotations

import platform
import subprocess


def cpu_flags() -> str:
    """The CPU's model and its vector flags (lscpu), written beside every figure."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    model = fields.get("Model name", "").strip()
    flags = fields.get("Flags", "").split()
    vector = [f for f in flags if f.startswith(("avx", "fma", "f16c", "amx", "sve", "asimd"))]
    return f"{model}; {' '.join(vector) or 'no AVX/NEON flags'}"


def _busy_seconds(loops: int = 3_000_000) -> float:
    import time

    started = time.perf_counter()
    total = 0
    for i in range(loops):
        total += i & 7
    return time.perf_counter() - started


def two_core_check() -> float:
    """How many cores this benchmark has to itself, near 2.0 on a quiet 2-core machine: one
    busy loop alone, then the same loop in two processes at once, 2 x (alone / slower of two).
    Below ~1.9 another job held a core during the check, and figures beside it are suspect."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawned, not forked: the caller may hold torch's, the kernels' or llama.cpp's threads
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_busy_seconds, [10_000, 10_000]))  # the workers started and warm
        alone = min(pool.submit(_busy_seconds).result() for _ in range(2))
        both = max(pool.map(_busy_seconds, [3_000_000, 3_000_000]))
    return 2 * alone / both
