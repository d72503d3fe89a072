"""RMSNorm's bodies (kernels/norm*.c): every variant this CPU runs (on an AVX-512 machine the
avx2 one too, with its own body) gives the generic body's bits; the ARM64 NEON body is compared
under qemu (test_arm64_kernels.py)."""

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

HELPER = Path(__file__).parent / "norm_bodies.c"
# the body each variant's flags choose (q8_impl.h)
EXPECTED = {
    "generic": "q8_rms_norm_generic",
    "avx2": "q8_rms_norm_avx2",
    "avx512": "q8_rms_norm_avx512",
}
RUNNABLE = [v for v in variants_for(machine()) if v.requires <= cpu_features()]


def build(variant: KernelVariant, directory: Path) -> ctypes.CDLL:
    lib = build_bodies(variant, "norm", HELPER, directory)
    lib.rms_norm_body.restype = ctypes.c_char_p
    p = ctypes.c_void_p
    lib.body_rms_norm.argtypes = [ctypes.c_int, p, p, p, ctypes.c_int64, ctypes.c_float]
    lib.body_rms_norm.restype = None
    return lib


def norm(lib: ctypes.CDLL, which: int, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(x)
    lib.body_rms_norm(which, x.data_ptr(), scale.data_ptr(), out.data_ptr(), len(x), 1e-6)
    return out


def rows() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(30)
    cases = []
    for n in (1, 7, 15, 16, 17, 31, 32, 33, 100, 256, 640, 1152, 2048, 2053):
        cases.append(torch.randn(n, generator=gen))
        cases.append(torch.randn(n, generator=gen) * torch.logspace(-20, 20, n))  # far apart
    cases.append(torch.zeros(40))  # eps alone
    special = torch.randn(64, generator=gen)
    special[[5, 40]] = torch.tensor([float("inf"), -0.0])
    cases.append(special)
    with_nan = torch.randn(64, generator=gen)
    with_nan[9] = float("nan")
    cases.append(with_nan)
    return cases


@pytest.mark.parametrize("variant", RUNNABLE, ids=[v.name for v in RUNNABLE])
def test_each_variants_body_gives_the_generic_bits(variant: KernelVariant, tmp_path: Path) -> None:
    lib = build(variant, tmp_path)
    if variant.name in EXPECTED:
        assert lib.rms_norm_body().decode() == EXPECTED[variant.name]
    gen = torch.Generator().manual_seed(31)
    for x in rows():
        scale = torch.rand(len(x), generator=gen) + 0.5
        plain, chosen = norm(lib, 0, x, scale), norm(lib, 1, x, scale)
        same = (plain.view(torch.int32) == chosen.view(torch.int32)) | (
            plain.isnan() & chosen.isnan()
        )
        assert bool(same.all()), (variant.name, len(x))


def test_the_generic_body_is_rmsnorm(tmp_path: Path) -> None:
    lib = build(variants_for(machine())[0], tmp_path)
    gen = torch.Generator().manual_seed(32)
    for n in (1, 16, 37, 640):
        x, scale = torch.randn(n, generator=gen) * 3, torch.rand(n, generator=gen) + 0.5
        exact = x.double() / torch.sqrt(x.double().pow(2).mean() + 1e-6) * scale.double()
        assert torch.allclose(norm(lib, 0, x, scale).double(), exact, rtol=1e-6, atol=0)
    assert torch.equal(norm(lib, 0, torch.zeros(8), torch.ones(8)), torch.zeros(8))
