"""The ARM64 NEON kernels against the generic ones, cross-compiled and run under qemu-user.

tests/kernels/harness.c calls every kernel of one build on fixed inputs and prints its results'
bits; it is built four times for ARM64 (the generic bodies only, NEON with sdot, NEON with sdot
and i8mm's usmmla, NEON without either) with Debian's gcc-aarch64-linux-gnu and run under
qemu-user-static (as its "max" CPU, which has every extension), and once for this machine's
generic bodies. Skipped, saying which tool is missing, where those tools are not
installed (.ci/run installs them).
"""

from __future__ import annotations

import math
import os
import platform
import re
import shutil
import signal
import struct
import subprocess
from pathlib import Path

import pytest

from gemma_chat.infrastructure.llm.engine.native import KERNELS
from gemma_chat.infrastructure.llm.engine.q8 import HEADER, declarations

HARNESS = Path(__file__).parents[1] / "kernels" / "harness.c"
CROSS_CC = "aarch64-linux-gnu-gcc"
QEMU = ("qemu-aarch64-static", "qemu-aarch64")
# the bodies q8_impl.h chooses per operation (the harness prints each choice)
OPERATIONS = [
    "q8_quantize_block",
    "q8_store_halves",
    "q8_tiles_product",
    "q4_tiles_product",
    "q8_dot_f32",
    "q8_dots16",
    "q8_max_f32",
    "q8_exp_shifted",
    "q8_weighted_sums",
    "q8_gelu_tanh_mul",
    "q8_argmax_row",
    "q8_top_k_scan",
    "q8_rms_norm",
]
# where a body adds in its own order or uses its own exp: |a - b| <= CLOSE * max |b| per section
CLOSE = 1e-5

Results = dict[str, tuple[str, list[str]]]


def qemu() -> str | None:
    return next((path for name in QEMU if (path := shutil.which(name))), None)


def build_all(directory: Path, builds: dict[str, tuple[str, list[str]]]) -> dict[str, Path]:
    """Each build [compiler, flags] of the harness and every kernel source, side by side."""
    sources = sorted(str(p) for p in KERNELS.glob("*.c"))
    started = {}
    for name, (compiler, flags) in builds.items():
        command = [compiler, "-O2", *flags, f"-I{KERNELS}", str(HARNESS), *sources]
        command += ["-o", str(directory / name), "-lm", "-pthread"]
        started[name] = (command, subprocess.Popen(command, stderr=subprocess.PIPE, text=True))
    for command, process in started.values():
        _, errors = process.communicate(timeout=600)
        assert process.returncode == 0, f"{' '.join(command)}\n{errors}"
    return {name: directory / name for name in builds}


def run(command: list[str]) -> Results:
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    results: Results = {}
    for line in done.stdout.splitlines():
        name, kind, *words = line.split()
        results[name if name != "body" else f"body {kind}"] = (kind, words)
    return results


@pytest.fixture(scope="module")
def binaries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    emulator = qemu()
    if shutil.which(CROSS_CC) is None:
        pytest.skip(
            f"ARM64 kernels not checked: {CROSS_CC} is not installed (gcc-aarch64-linux-gnu)"
        )
    if emulator is None:
        pytest.skip(
            "ARM64 kernels not checked: qemu-aarch64-static is not installed (qemu-user-static)"
        )
    host_flags = ["-DQ8_NO_NEON"] + (["-march=x86-64"] if platform.machine() == "x86_64" else [])
    return build_all(
        tmp_path_factory.mktemp("arm64"),
        {
            "arm-generic": (CROSS_CC, ["-static", "-march=armv8.2-a+dotprod", "-DQ8_NO_NEON"]),
            "arm-neon-sdot": (CROSS_CC, ["-static", "-march=armv8.2-a+dotprod"]),
            "arm-neon-i8mm": (CROSS_CC, ["-static", "-march=armv8.2-a+dotprod+i8mm"]),
            # NEON without the dot product: the generic int8 products, NEON for the rest
            "arm-neon": (CROSS_CC, ["-static", "-march=armv8-a"]),
            "host-generic": (os.environ.get("CC", "cc"), host_flags),
        },
    )


@pytest.fixture(scope="module")
def builds(binaries: dict[str, Path]) -> dict[str, Results]:
    emulator = qemu()
    assert emulator is not None
    return {
        name: run([str(path)] if name.startswith("host") else [emulator, "-cpu", "max", str(path)])
        for name, path in binaries.items()
    }


def floats(words: list[str]) -> list[float]:
    if len(words[0]) == 4:  # float16
        return [struct.unpack("<e", bytes.fromhex(w)[::-1])[0] for w in words]
    return [struct.unpack("<f", bytes.fromhex(w)[::-1])[0] for w in words]


def assert_close(name: str, got: list[str], expected: list[str]) -> None:
    a, b = floats(got), floats(expected)
    assert [math.isnan(x) for x in a] == [math.isnan(y) for y in b], name
    scale = max((abs(y) for y in b if math.isfinite(y)), default=0.0)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if math.isinf(y) or math.isnan(y):
            assert x == y or math.isnan(x), f"{name}[{i}]: {x} != {y}"
        else:
            assert abs(x - y) <= CLOSE * scale, f"{name}[{i}]: {x} vs {y} (scale {scale})"


def compare(got: Results, reference: Results, *, same_architecture: bool) -> None:
    sections = [name for name in reference if not name.startswith(("body ", "vector_kernels"))]
    assert sections == [n for n in got if not n.startswith(("body ", "vector_kernels"))]
    for name in sections:
        kind, expected = reference[name]
        words = got[name][1]
        assert len(words) == len(expected), name
        if kind == "exact" or (kind == "arch" and same_architecture):
            assert words == expected, f"{name}: not the reference's bits"
        else:
            assert_close(name, words, expected)


def test_the_harness_calls_every_exported_kernel() -> None:
    source = HARNESS.read_text()
    exported = re.findall(r"(\w+)\s*\([^()]*\)\s*;", declarations(HEADER.read_text()))
    assert exported
    assert [name for name in exported if f"{name}(" not in source] == []


def test_each_build_runs_the_bodies_it_was_built_for(builds: dict[str, Results]) -> None:
    def chosen(build: str) -> dict[str, str]:
        return {op: builds[build][f"body {op}"][1][0] for op in OPERATIONS}

    assert chosen("arm-generic") == {op: f"{op}_generic" for op in OPERATIONS}
    assert chosen("arm-neon-sdot") == {op: f"{op}_neon" for op in OPERATIONS}
    with_i8mm = {op: f"{op}_neon" for op in OPERATIONS}
    with_i8mm["q8_tiles_product"] = "q8_tiles_product_i8mm"
    with_i8mm["q4_tiles_product"] = "q4_tiles_product_i8mm"
    assert chosen("arm-neon-i8mm") == with_i8mm
    without_sdot = {op: f"{op}_neon" for op in OPERATIONS}
    without_sdot["q8_tiles_product"] = "q8_tiles_product_generic"
    without_sdot["q4_tiles_product"] = "q4_tiles_product_generic"
    assert chosen("arm-neon") == without_sdot
    kinds = {build: builds[build]["vector_kernels"][0] for build in builds}
    assert kinds == {
        "arm-generic": "0",
        "arm-neon-sdot": "3",
        "arm-neon-i8mm": "4",
        "arm-neon": "0",
        "host-generic": "0",
    }


@pytest.mark.parametrize("build", ["arm-neon-sdot", "arm-neon-i8mm", "arm-neon"])
def test_the_neon_bodies_give_the_generic_results(builds: dict[str, Results], build: str) -> None:
    # the same bits for int8 products, quantization, float16 stores, weighted sums, argmax,
    # top-k and RMSNorm; dot products, exp and GELU (own order of adds, own exp) within CLOSE
    compare(builds[build], builds["arm-generic"], same_architecture=True)


def test_the_neon_float_bodies_differ_from_the_generic_ones_only_in_rounding(
    builds: dict[str, Results],
) -> None:
    neon, generic = builds["arm-neon-sdot"], builds["arm-generic"]
    assert neon["dots16.256"] != generic["dots16.256"]  # the NEON body ran, in its own order
    assert neon["matmul.250x256x4"] == generic["matmul.250x256x4"]
    assert any(w != "00000000" for w in generic["matmul.250x256x4"][1])
    assert neon["matmul4.250x256x4"] == generic["matmul4.250x256x4"]
    assert any(w != "00000000" for w in generic["matmul4.250x256x4"][1])


def test_this_machines_generic_build_gives_the_arm64_generic_bits(
    builds: dict[str, Results],
) -> None:
    # the generic bodies define their results' bits (explicit FMAs, integer sums) on any
    # architecture, except where a compiler fuses a * b + c on one and not on the other
    compare(builds["host-generic"], builds["arm-generic"], same_architecture=False)


def test_the_i8mm_build_gives_the_sdot_builds_bits_everywhere(builds: dict[str, Results]) -> None:
    # its products give the generic bits (above), and every other body is the sdot build's:
    # so the decoder block, prefill and decode included, is bit for bit the same
    i8mm, sdot = builds["arm-neon-i8mm"], builds["arm-neon-sdot"]
    sections = [name for name in sdot if not name.startswith(("body ", "vector_kernels"))]
    assert [name for name in sections if i8mm[name] != sdot[name]] == []
    assert any(name.startswith("block.") for name in sections)


def test_the_i8mm_build_runs_i8mm_instructions(binaries: dict[str, Path]) -> None:
    # on an emulated CPU with the dot product and without i8mm (Neoverse N1) the i8mm build
    # stops at an illegal instruction where the sdot build runs: the comparisons above ran i8mm
    emulator = qemu()
    assert emulator is not None
    known = subprocess.run([emulator, "-cpu", "help"], capture_output=True, text=True).stdout
    if "neoverse-n1" not in known:
        pytest.skip(f"{emulator} does not emulate a Neoverse N1 (dot product without i8mm)")

    def on_n1(build: str) -> subprocess.CompletedProcess[bytes]:
        command = [emulator, "-cpu", "neoverse-n1", str(binaries[build])]
        return subprocess.run(command, capture_output=True, timeout=300)

    assert on_n1("arm-neon-sdot").returncode == 0
    i8mm = on_n1("arm-neon-i8mm")
    assert i8mm.returncode == -signal.SIGILL or b"Illegal instruction" in i8mm.stderr
