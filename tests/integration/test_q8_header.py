"""The kernels' one header (kernels/q8.h): what Python binds is what the C code states."""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gemma_chat.infrastructure.llm.engine.native import build_library
from gemma_chat.infrastructure.llm.engine.q8 import HEADER, Q8Kernels, declarations


def header_functions() -> list[str]:
    return re.findall(r"(\w+)\s*\([^()]*\)\s*;", declarations(HEADER.read_text()))


def test_pointer_parameters_are_bound_as_addresses_and_the_rest_as_written() -> None:
    header = """#include <x.h>
    /* cffi:begin */
    typedef struct { const float *p; int64_t n; } pair; /* a (comment) */
    void f(const float *x, int64_t n, pair *p, float mult);
    int g(void);
    /* cffi:end */
    void not_bound(int *x);"""
    bound = declarations(header)
    assert "typedef struct { const float *p; int64_t n; } pair;" in bound
    assert "void f(uintptr_t x, int64_t n, uintptr_t p, float mult);" in bound
    assert "int g(void);" in bound
    for left_out in ("not_bound", "#include", "comment"):
        assert left_out not in bound


def test_every_function_the_header_states_is_exported_by_the_library(kernels: Q8Kernels) -> None:
    names = header_functions()
    assert {"q8p_matmul", "gemma_decode_block", "q8_top_k_rows"} <= set(names)
    for name in names:
        assert callable(getattr(kernels._lib, name)), name  # cffi resolves the symbol here
    nm = shutil.which("nm")
    if nm is not None:  # and nothing else: the operations' bodies stay inside the library
        table = subprocess.run(
            [nm, "-D", "--defined-only", str(kernels.path)],
            text=True,
            capture_output=True,
            check=True,
        ).stdout
        exported = {line.split()[-1] for line in table.splitlines() if line.strip()}
        assert {name for name in exported if not name.startswith("bpe_")} == set(names)


def test_cffi_lays_the_structs_out_as_the_c_compiler_does(
    kernels: Q8Kernels, tmp_path: Path
) -> None:
    compiler = shutil.which("cc") or shutil.which("gcc")
    assert compiler is not None
    ffi = kernels.ffi
    lines, expected = [], []
    for struct in ("q8_weight", "gemma_block"):
        lines.append(f'printf("%zu\\n", sizeof({struct}));')
        expected.append(ffi.sizeof(struct))
        for field, _ in ffi.typeof(struct).fields:
            lines.append(f'printf("%zu\\n", offsetof({struct}, {field}));')
            expected.append(ffi.offsetof(struct, field))
    program = tmp_path / "layout.c"
    program.write_text(
        '#include <stddef.h>\n#include <stdio.h>\n#include "q8.h"\n'
        "int main(void) {\n" + "\n".join(lines) + "\nreturn 0;\n}\n"
    )
    binary = tmp_path / "layout"
    subprocess.run([compiler, f"-I{HEADER.parent}", str(program), "-o", str(binary)], check=True)
    printed = subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout
    assert [int(n) for n in printed.split()] == expected


def test_the_avx512_vnni_bodies_compile(tmp_path: Path) -> None:
    # Built, not run: a CPU without AVX-512 (as this project's CI machine may be) cannot run
    # them. Where the CPU has AVX-512 VNNI, the native build runs them in the other tests.
    if platform.machine() != "x86_64":
        pytest.skip("x86-64 builds")
    built = build_library(tmp_path, variant="avx512")
    assert built is not None
    assert built.stat().st_size > 0
    nm = shutil.which("nm")
    if nm is not None:
        symbols = subprocess.run([nm, str(built)], capture_output=True, text=True).stdout
        for body in ("q8_tiles_product_avx512", "q8_dots16_avx512", "q8_top_k_scan_avx512"):
            assert body in symbols
