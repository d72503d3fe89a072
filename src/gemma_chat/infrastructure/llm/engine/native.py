"""Our C code (``kernels/*.c``), compiled once per machine with the system's C compiler.

The library is built on first use for the CPU it runs on (``-march=native``) and cached under
``<cache_dir>/kernels``, keyed by its sources, the compiler, the flags and the CPU's features.
Nothing here imports torch: the tokenizer loads from it before torch is imported.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["load_library"]

logger = logging.getLogger(__name__)

_SOURCES = [Path(__file__).parent / "kernels" / name for name in ("q8.c", "bpe.c")]
_FLAGS = ["-O3", "-pthread", "-shared", "-fPIC", "-lm"]
_loaded: dict[Path, ctypes.CDLL] = {}


def load_library(cache_dir: Path, *, march: str = "native") -> ctypes.CDLL | None:
    """The compiled library, built on first use; None when no C compiler can build it.

    ``march`` is the target CPU: this machine's by default (its vector instructions); tests
    build a generic one to check that the portable code gives the same results."""
    flags = [f"-march={march}", *_FLAGS]
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        logger.warning("No C compiler found: the native kernels are unavailable")
        return None
    sources = b"".join(source.read_bytes() for source in _SOURCES)
    key = hashlib.sha256(sources + " ".join([compiler, *flags]).encode() + _cpu_id()).hexdigest()
    target = Path(cache_dir) / "kernels" / f"native-{key[:16]}.so"
    if target in _loaded:
        return _loaded[target]
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            command = [compiler, *map(str, _SOURCES), "-o", tmp, *flags]
            result = subprocess.run(command, capture_output=True, text=True)
            error = result.stderr.strip() if result.returncode else ""
        except OSError as exc:
            error = str(exc)
        if error:
            os.unlink(tmp)
            logger.warning("Could not build the native kernels: %s", error[:500])
            return None
        os.replace(tmp, target)
    try:
        library = ctypes.CDLL(str(target))
    except OSError as exc:  # a stale or foreign build
        logger.warning("Could not load the native kernels (%s); rebuilding next time", exc)
        target.unlink(missing_ok=True)
        return None
    _loaded[target] = library
    return library


def _cpu_id() -> bytes:
    # -march=native builds for this CPU: a different CPU needs its own build.
    try:
        flags = next(
            line
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("flags")
        )
    except (OSError, StopIteration):
        flags = ""
    return flags.encode()
