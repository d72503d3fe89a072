"""The fused decoder block (``kernels/decoder_block.c``) when an allocation fails: each of its
buffers (the rows' scratch, the attention runs, each attention task's room) made to fail in
turn, the call raises ``OutOfMemoryError`` instead of writing through NULL, and the next call
gives the bits of a model that never failed."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from gemma_chat.domain.errors import OutOfMemoryError
from gemma_chat.infrastructure.llm.engine.kv_cache import KVCache
from gemma_chat.infrastructure.llm.engine.model import Gemma3Model
from gemma_chat.infrastructure.llm.engine.native import _FLAGS, KERNELS, choose_variant
from gemma_chat.infrastructure.llm.engine.q8 import Q8Kernels

from .test_q8_kernels import small_q8_model

HARNESS = Path(__file__).parent / "failing_allocations.c"


def failing_build(directory: Path) -> tuple[Q8Kernels, ctypes.CDLL]:
    """The kernels as the engine builds them for this CPU, but for decoder_block.c's
    allocations, which go through the harness (``allocations_reset``)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    assert compiler is not None, "a C compiler is part of the supported set-up"
    variant = choose_variant()
    flags = [*variant.flags, "-O3", "-pthread", "-fPIC"]
    block = directory / "decoder_block.o"
    redirect = ["-Dmalloc=counted_malloc", "-Dcalloc=counted_calloc"]
    subprocess.run(
        [compiler, *flags, *redirect, "-c", str(KERNELS / "decoder_block.c"), "-o", str(block)],
        check=True,
    )
    others = [s for s in sorted(KERNELS.glob("*.c")) if s.name != "decoder_block.c"]
    target = directory / "failing.so"
    sources = [str(s) for s in [*others, HARNESS, block]]
    subprocess.run([compiler, *sources, "-o", str(target), *variant.flags, *_FLAGS], check=True)
    return Q8Kernels(target, variant.name), ctypes.CDLL(str(target))


def prefill_and_step(
    model: Gemma3Model, prompts: torch.Tensor, chunk: int, harness: ctypes.CDLL
) -> tuple[torch.Tensor, int]:
    """Three prompts prefilled together, then one decode step: its logits [3, V] and the
    allocations it made (``chunk``: the cache's, ``KVCache``)."""
    b, s = prompts.shape
    cache = KVCache(model.config, slots=4, dtype=model.kv_dtype, chunk=chunk)
    rows = torch.tensor([2, 0, 1])
    with torch.inference_mode():
        model(prompts, torch.arange(s).repeat(b, 1), rows, cache)
        before = harness.allocations_made()
        logits = model(prompts[:, -1:], torch.full((b, 1), s), rows, cache, decoding=True)
        return logits, harness.allocations_made() - before


def test_every_failed_allocation_raises_and_leaves_the_next_call_right(tmp_path: Path) -> None:
    kernels, harness = failing_build(tmp_path)
    harness.allocations_reset.argtypes = [ctypes.c_long]
    harness.allocations_made.restype = ctypes.c_long
    model = small_q8_model(kernels)
    assert model.block_decoder is not None
    prompts = torch.randint(0, 96, (3, 20), generator=torch.Generator().manual_seed(2))
    harness.allocations_reset(0)
    _, unwrapped = prefill_and_step(model, prompts, 4096, harness)  # every position in place
    # The sliding layers' window is 8: with a chunk of 8, a ring of 16 positions, and the
    # decode step's window (positions 13 to 20) wraps in it: its values are copied out too.
    harness.allocations_reset(0)
    expected, wrapped = prefill_and_step(model, prompts, 8, harness)
    assert wrapped > unwrapped
    made = harness.allocations_made()
    for fail in range(1, made + 1):
        harness.allocations_reset(fail)
        with pytest.raises(OutOfMemoryError, match="could not be allocated"):
            prefill_and_step(model, prompts, 8, harness)
        assert harness.allocations_made() >= fail
    harness.allocations_reset(0)
    assert torch.equal(prefill_and_step(model, prompts, 8, harness)[0], expected)
