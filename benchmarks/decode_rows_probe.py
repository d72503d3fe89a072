#!/usr/bin/env python3
"""Model-level time of a decode step at one row and at eight (one row per sequence), blocks and
output head apart, and the kernel-level ratio a concurrent run can reach at most.

    GEMMA_PERFORMANCE__KERNEL_VARIANT=avx512 python benchmarks/decode_rows_probe.py [--repeats 30]
        [--quantization int4]

Loads the embedded model (int8, or with ``--quantization int4`` its 4-bit head) through the
converted-model cache, prefills eight sequences of ``--history`` tokens, then times, best of
``--repeats`` each and interleaved: the fused blocks (``Gemma3Model._rows``), the output head
(``lm_head`` on [M, hidden]) and a whole step (``forward_rows`` and argmax). ``ratio_x8`` is 8 x
one row's step over eight rows' step: what "8 concurrent vs the same 8 one after another" would
be with nothing around the model. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from gemma_chat.infrastructure.llm.engine.converted_store import ConvertedModelStore, WeightFormat
from gemma_chat.infrastructure.llm.engine.kv_cache import KVCache
from gemma_chat.infrastructure.llm.engine.q8 import load_kernels
from gemma_chat.infrastructure.llm.loading.model_source import resolve_model_source
from gemma_chat.shared.config.settings import get_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--history", type=int, default=64)
    parser.add_argument("--quantization", choices=("int8", "int4"), default="int8")
    args = parser.parse_args()
    settings = get_settings()
    kernels = load_kernels(settings.cache_dir, variant=settings.performance.kernel_variant)
    assert kernels is not None, "the native kernels need a C compiler"
    store = ConvertedModelStore(settings.cache_dir)
    source = resolve_model_source(settings.model.name)
    weights = WeightFormat.q4(kernels) if args.quantization == "int4" else WeightFormat.q8(kernels)
    model = store.load_or_convert(source, weights).model
    cache = KVCache(model.config, slots=8, dtype=model.kv_dtype)
    history = args.history
    best: dict[str, float] = {}
    with torch.inference_mode():
        for slot in range(8):
            ids = torch.randint(100, 5000, (history,))
            slots = torch.full((history,), slot)
            model.forward_rows(ids, torch.arange(history), slots, cache, [history - 1])
            cache.ensure(slot, history + 9)
        for repeat in range(args.repeats):
            for m in (1, 8):
                ids = torch.randint(100, 5000, (m,))
                positions, slots = torch.full((m,), history + repeat % 8), torch.arange(m)
                x = torch.randn(m, model.config.hidden_size)
                started = time.perf_counter()
                model._rows(ids, positions, slots, cache)
                blocks = time.perf_counter()
                model.lm_head(x)
                head = time.perf_counter()
                kernels.argmax(model.forward_rows(ids, positions, slots, cache, list(range(m))))
                step = time.perf_counter()
                for name, seconds in (
                    (f"blocks_M{m}", blocks - started),
                    (f"head_M{m}", head - blocks),
                    (f"step_M{m}", step - head),
                ):
                    best[name] = min(best.get(name, float("inf")), seconds)
    figures: dict[str, object] = {
        "variant": kernels.variant,
        "quantization": args.quantization,
        "history": history,
    }
    figures["ratio_x8"] = round(8 * best["step_M1"] / best["step_M8"], 2)
    figures.update({name: round(seconds * 1e3, 3) for name, seconds in sorted(best.items())})
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
