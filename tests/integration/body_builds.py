"""Builds of one kernel family's sources with a C harness that calls its bodies (the tests of
norm*.c and attention*.c): compiled with a variant's own flags, as the engine builds them."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

from gemma_chat.infrastructure.llm.engine.native import KERNELS, KernelVariant


def build_bodies(
    variant: KernelVariant, family: str, harness: Path, directory: Path
) -> ctypes.CDLL:
    """``kernels/<family>*.c`` and ``harness`` compiled with ``variant``'s flags, loaded."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    assert compiler is not None, "a C compiler is part of the supported set-up"
    target = directory / f"{family}-{variant.name}.so"
    sources = [*sorted(KERNELS.glob(f"{family}*.c")), harness]
    subprocess.run(
        [compiler, *variant.flags, "-O3", "-shared", "-fPIC", f"-I{KERNELS}"]
        + [str(s) for s in sources]
        + ["-o", str(target), "-lm"],
        check=True,
    )
    return ctypes.CDLL(str(target))
