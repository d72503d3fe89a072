"""Attention's scores for several query heads at once (``q8_dots16_heads``), in every kernel
variant this CPU runs: each head's scores are the bits of that build's one-head body, so a decode
step's attention does not depend on how its query heads are grouped."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest
import torch

from gemma_chat.infrastructure.llm.engine.native import (
    KernelVariant,
    cpu_features,
    machine,
    variants_for,
)

from .body_builds import build_bodies

HELPER = Path(__file__).parent / "attention_bodies.c"
# the body each variant's flags choose (q8_impl.h)
EXPECTED = {
    "generic": "q8_dots16_heads_generic",
    "avx2": "q8_dots16_heads_avx2",
    "avx512": "q8_dots16_heads_avx512",
}
RUNNABLE = [v for v in variants_for(machine()) if v.requires <= cpu_features()]


def build(variant: KernelVariant, directory: Path) -> ctypes.CDLL:
    lib = build_bodies(variant, "attention", HELPER, directory)
    lib.scores_body.restype = ctypes.c_char_p
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.body_scores.argtypes = [ctypes.c_int, p, i64, p, i64, p, p]
    lib.body_scores.restype = None
    return lib


def scores(lib: ctypes.CDLL, which: int, q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    heads, d = q.shape
    out, room = torch.full((heads, 16), float("nan")), torch.zeros(d)
    lib.body_scores(which, q.data_ptr(), heads, keys.data_ptr(), d, out.data_ptr(), room.data_ptr())
    return out


@pytest.mark.parametrize("variant", RUNNABLE, ids=lambda v: v.name)
def test_the_scores_of_several_heads_are_each_heads_own_bits(
    variant: KernelVariant, tmp_path: Path
) -> None:
    lib = build(variant, tmp_path)
    if variant.name in EXPECTED:
        assert lib.scores_body().decode() == EXPECTED[variant.name]
    gen = torch.Generator().manual_seed(40)
    for d in (256, 128, 48, 40, 32):
        keys = (torch.randn(16, d, generator=gen) * 3).half()
        keys[3, :4] = torch.tensor([6e-8, -6e-5, 65504.0, 0.0]).half()  # subnormal, largest
        for heads in range(1, 10):
            q = torch.randn(heads, d, generator=gen)
            apart, together = scores(lib, 0, q, keys), scores(lib, 1, q, keys)
            assert torch.equal(apart.view(torch.int32), together.view(torch.int32)), (d, heads)
            assert torch.allclose(together, q @ keys.float().T, rtol=1e-4, atol=1e-3)
