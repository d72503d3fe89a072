#!/usr/bin/env python3
"""Single-thread speed of the int8 and 4-bit weight products, per kernel variant, in GOP/s.

    python benchmarks/products_benchmark.py [--variants avx2,avx2-vnni-evex] [--repeats 50]
        [--shapes 4096x640,640x2048] [--rows 1,8]

Builds each named variant this CPU runs (in the settings' cache directory), sets one thread,
and times ``y = x @ w.T`` through ``Q8Linear`` / ``Q4Linear`` on the embedded model's shapes
(N x K; by default gate and up fused: 4096 x 640, and down: 640 x 2048; the blocks' others are
1024 x 640 and 640 x 1024) at M = 1 and M = 8 rows (a prefill's: ``--rows 1412``), best of
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="avx2,avx2-vnni-evex")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--shapes", default="4096x640,640x2048", help="N x K, comma-separated")
    parser.add_argument("--rows", default="1,8", help="M, comma-separated")
    args = parser.parse_args()
    shapes = [tuple(int(size) for size in shape.split("x")) for shape in args.shapes.split(",")]
    rows = [int(m) for m in args.rows.split(",")]
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
    for n, k in shapes:
        w = torch.randn(n, k, generator=gen)
        for name, kernels in builds.items():
            packed = pack_weight4(*quantize_weight4(kernels, w))
            layers = {
                "int8": Q8Linear.from_weight(kernels, w),
                "int4": Q4Linear(kernels, packed, n),
            }
            for bits, layer in layers.items():
                for m in rows:
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
