#!/usr/bin/env python3
"""Single-thread speed of the int8 and 4-bit weight products, per kernel variant, in GOP/s.

    python benchmarks/products_benchmark.py [--variants avx2,avx2-vnni-evex] [--repeats 50]

Builds each named variant this CPU runs (in the settings' cache directory), sets one thread,
and times ``y = x @ w.T`` through ``Q8Linear`` / ``Q4Linear`` on the embedded model's shapes
(gate and up fused: 4096 x 640; down: 640 x 2048) at M = 1 and M = 8 rows, best of
``--repeats``, the variants interleaved. GOP/s counts 2 M N K operations. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from gemma_chat.infrastructure.llm.engine.q8 import (
    Q4Linear,
    Q8Linear,
    load_kernels,
    pack_weight4,
    quantize_weight4,
)
from gemma_chat.shared.config.settings import get_settings

SHAPES = [(4096, 640), (640, 2048)]  # (N, K)
ROWS = [1, 8]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="avx2,avx2-vnni-evex")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the kernels take torch's thread count
    cache = get_settings().cache_dir
    builds = {}
    for name in args.variants.split(","):
        kernels = load_kernels(cache, variant=name)
        assert kernels is not None, f"{name}: no build"
        builds[name] = kernels
    gen = torch.Generator().manual_seed(0)
    best: dict[str, float] = {}
    cases = []
    for n, k in SHAPES:
        w = torch.randn(n, k, generator=gen)
        for name, kernels in builds.items():
            packed = pack_weight4(*quantize_weight4(kernels, w))
            layers = {
                "int8": Q8Linear.from_weight(kernels, w),
                "int4": Q4Linear(kernels, packed, n),
            }
            for bits, layer in layers.items():
                for m in ROWS:
                    x = torch.randn(m, k, generator=gen)
                    cases.append((f"{name} {bits} M={m} {n}x{k}", layer, x, 2 * m * n * k))
    with torch.inference_mode():
        for _ in range(args.repeats):  # interleaved: a noisy moment costs every case alike
            for label, layer, x, _ in cases:
                started = time.perf_counter()
                layer(x)
                seconds = time.perf_counter() - started
                best[label] = min(best.get(label, float("inf")), seconds)
    print(json.dumps({label: round(ops / best[label] / 1e9, 1) for label, _, _, ops in cases}))


if __name__ == "__main__":
    main()
