"""The native kernels when an allocation fails: each buffer of the fused decoder block
(``kernels/decoder_block.c``: the rows' scratch, the attention runs, each attention task's room),
of its products and the output head's (``matmul.c``: the block sums, the octet records) and of
the native tokenizer (``bpe.c``) made to fail in turn, the call raises ``OutOfMemoryError``
instead of writing through NULL, and the next call gives the bits of one that never failed."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from gemma_chat.domain.errors import OutOfMemoryError
from gemma_chat.infrastructure.llm.engine.kv_cache import KVCache
from gemma_chat.infrastructure.llm.engine.model import Gemma3Model
from gemma_chat.infrastructure.llm.engine.native import _FLAGS, KERNELS, choose_variant
from gemma_chat.infrastructure.llm.engine.q8 import Q4Linear, Q8Kernels, Q8Linear
from gemma_chat.infrastructure.llm.tokenizers.hf_tokenizers import HFTokenizersTokenizer
from gemma_chat.infrastructure.llm.tokenizers.native_bpe import (
    VOCABULARY,
    NativeBPETokenizer,
    _declare,
    write_vocabulary,
)

from .test_native_tokenizer import random_texts, sentencepiece_style_tokenizer
from .test_q8_kernels import small_q8_model

HARNESS = Path(__file__).parent / "failing_allocations.c"
COUNTED = ("decoder_block.c", "matmul.c", "bpe.c")  # every kernel source that allocates


def failing_build(directory: Path) -> tuple[Q8Kernels, ctypes.CDLL]:
    """The kernels as the engine builds them for this CPU, but for the allocations of
    ``COUNTED``, which go through the harness (``allocations_reset``)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    assert compiler is not None, "a C compiler is part of the supported set-up"
    variant = choose_variant()
    flags = [*variant.flags, "-O3", "-pthread", "-fPIC"]
    redirect = ["-Dmalloc=counted_malloc", "-Dcalloc=counted_calloc"]
    counted = []
    for name in COUNTED:
        counted.append(directory / name.replace(".c", ".o"))
        subprocess.run(
            [compiler, *flags, *redirect, "-c", str(KERNELS / name), "-o", str(counted[-1])],
            check=True,
        )
    others = [s for s in sorted(KERNELS.glob("*.c")) if s.name not in COUNTED]
    target = directory / "failing.so"
    sources = [str(s) for s in [*others, HARNESS, *counted]]
    subprocess.run([compiler, *sources, "-o", str(target), *variant.flags, *_FLAGS], check=True)
    harness = ctypes.CDLL(str(target))
    harness.allocations_reset.argtypes = [ctypes.c_long]
    harness.allocations_made.restype = ctypes.c_long
    return Q8Kernels(target, variant.name), harness


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
    block, failed_blocks = kernels.block, []

    def block_leaving_x_as_it_was(*args: Any) -> None:
        x = args[1].clone()
        try:
            block(*args)
        except OutOfMemoryError:
            failed_blocks.append(torch.equal(args[1], x))
            raise

    kernels.block = block_leaving_x_as_it_was  # type: ignore[method-assign]
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
    # the head's products fail outside the blocks; every block that failed left x as it was
    assert 0 < len(failed_blocks) < made
    assert all(failed_blocks)


@pytest.mark.parametrize("linear", [Q8Linear, Q4Linear])
def test_a_product_that_cannot_allocate_raises_and_the_next_one_is_right(
    tmp_path: Path, linear: type[Q8Linear]
) -> None:
    # an output head's width (matmul.c's OCTETS_FROM_N) and 9 rows: on a build with octet
    # records, rows 0-7 are packed (a second buffer beside the block sums) and row 8 is not
    kernels, harness = failing_build(tmp_path)
    gen = torch.Generator().manual_seed(3)
    layer = linear.from_weight(kernels, torch.randn(16384, 64, generator=gen))
    x = torch.randn(9, 64, generator=gen)
    harness.allocations_reset(0)
    expected = layer(x)
    made = harness.allocations_made()
    assert made >= 1  # the 4-bit weights' block sums at least
    for fail in range(1, made + 1):
        harness.allocations_reset(fail)
        with pytest.raises(OutOfMemoryError, match="could not be allocated"):
            layer(x)
    harness.allocations_reset(0)
    assert torch.equal(layer(x), expected)


def test_the_native_tokenizer_raises_when_it_cannot_allocate(tmp_path: Path) -> None:
    _, harness = failing_build(tmp_path)
    directory = sentencepiece_style_tokenizer(tmp_path / "tok")
    assert write_vocabulary(directory)
    _declare(harness)
    handle = harness.bpe_load(str(directory / VOCABULARY).encode())
    assert handle
    native = NativeBPETokenizer(harness, handle, HFTokenizersTokenizer.read_config(directory))
    text = "zebra 😀 <bos>x the thing " + "".join(random_texts(3, seed=4))
    harness.allocations_reset(0)
    ids = native.encode(text)
    decoded = native.decode(ids)
    made = harness.allocations_made()
    assert made >= 3  # two stretches of text around <bos>, and the decoding's bytes
    for fail in range(1, made + 1):
        harness.allocations_reset(fail)
        with pytest.raises(OutOfMemoryError, match="could not be allocated"):
            assert native.decode(native.encode(text)) == decoded
    harness.allocations_reset(0)
    assert native.encode(text) == ids
    assert native.decode(ids) == decoded
