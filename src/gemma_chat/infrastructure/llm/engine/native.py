"""Our C code (``kernels/*.c``), compiled once per machine with the system's C compiler.

The library is built on first use for the CPU it runs on (``-march=native``) and cached under
``<cache_dir>/kernels``, keyed by every source and header, the compiler, the flags and the CPU's
features. Processes sharing a cache directory build an entry once: the build runs under a file
lock (the OS drops it when its holder dies, so a killed build never blocks another), writes a
temporary file and renames it into place, and a process that finds the entry finished uses it.
A failed build leaves a marker under the same key: later starts say so once and do not retry
until the compiler or the sources change. Nothing here imports torch: the tokenizer loads from
it before torch is imported.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from filelock import FileLock, Timeout

__all__ = ["KERNELS", "build_library", "load_library"]

logger = logging.getLogger(__name__)

KERNELS = Path(__file__).parent / "kernels"
_FLAGS = ["-O3", "-pthread", "-shared", "-fPIC", "-lm"]
LOCK_TIMEOUT = 600.0  # seconds to wait for another process's build of the same entry

_built: dict[Path, Path | None] = {}  # this process's answer per entry: worked out once
_building = threading.Lock()  # the tokenizer's prefetch thread asks beside the model's load
_loaded: dict[Path, ctypes.CDLL] = {}


def build_library(cache_dir: Path, *, march: str = "native") -> Path | None:
    """The compiled library's path, built on first use; None when it cannot be built here.

    ``march`` is the target CPU: this machine's by default (its vector instructions); tests
    build a generic one to check that the portable code gives the same results."""
    flags = [f"-march={march}", *_FLAGS]
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    sources = sorted(KERNELS.glob("*.c"))
    directory = Path(cache_dir) / "kernels"
    key = _key(compiler, flags)
    entry = directory / key
    with _building:
        if entry not in _built:
            _built[entry] = _build(directory, key, compiler, flags, sources)
        return _built[entry]


def load_library(cache_dir: Path, *, march: str = "native") -> ctypes.CDLL | None:
    """The compiled library (``build_library``) loaded with ctypes; None without it."""
    target = build_library(cache_dir, march=march)
    if target is None:
        return None
    if target not in _loaded:
        try:
            _loaded[target] = ctypes.CDLL(str(target))
        except OSError as exc:  # not a library any more (changed under us): built again next time
            logger.warning("Could not load the native kernels (%s); rebuilding next time", exc)
            target.unlink(missing_ok=True)
            return None
    return _loaded[target]


def _build(
    directory: Path, key: str, compiler: str | None, flags: list[str], sources: list[Path]
) -> Path | None:
    directory.mkdir(parents=True, exist_ok=True)
    name = f"native-{key[:16]}"
    target, failed = directory / f"{name}.so", directory / f"{name}.failed"
    if target.is_file():
        return target
    if failed.is_file():
        _say_unavailable(failed.read_text(errors="replace"), failed, remembered=True)
        return None
    try:
        with FileLock(directory / f"{name}.lock", timeout=LOCK_TIMEOUT):
            if target.is_file():  # another process built it while this one waited
                return target
            if failed.is_file():
                _say_unavailable(failed.read_text(errors="replace"), failed, remembered=True)
                return None
            error = _compile(compiler, flags, sources, target)
            if error:
                _write_atomically(failed, error)
                _say_unavailable(error, failed, remembered=False)
                return None
            return target
    except Timeout:
        logger.warning(
            "Waited %.0f s for another process to build the native kernels (lock %s) and gave "
            "up: running without them this time. If no such build is running, delete the lock.",
            LOCK_TIMEOUT,
            directory / f"{name}.lock",
        )
        return None


def _compile(compiler: str | None, flags: list[str], sources: list[Path], target: Path) -> str:
    """Builds ``target`` (written whole or not at all); the error, or "" on success."""
    if compiler is None:
        return "no C compiler found: neither CC, cc nor gcc"
    fd, tmp = tempfile.mkstemp(suffix=".so.tmp", dir=target.parent)
    os.close(fd)
    try:
        command = [compiler, *map(str, sources), "-o", tmp, *flags]
        result = subprocess.run(command, capture_output=True, text=True)
        error = result.stderr.strip() or f"exit status {result.returncode}"
        if result.returncode:
            return error[:2000]
        os.replace(tmp, target)
        return ""
    except OSError as exc:
        return f"{compiler}: {exc.strerror or exc}"
    finally:
        Path(tmp).unlink(missing_ok=True)


def _say_unavailable(error: str, marker: Path, *, remembered: bool) -> None:
    when = "when last tried, " if remembered else ""
    logger.warning(
        "Could not build the native kernels (%s%s). The engine runs without them: bfloat16 "
        "weights instead of int8 (about 3x slower) and the Python tokenizer. To fix it, install "
        "a C compiler (e.g. `apt-get install gcc`) or point CC at one. Not retried until the "
        "compiler or the kernel sources change (remembered in %s).",
        when,
        error.splitlines()[0][:300] if error else "unknown error",
        marker,
    )


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    os.replace(tmp, path)


def _key(compiler: str | None, flags: list[str]) -> str:
    digest = hashlib.sha256()
    for path in sorted([*KERNELS.glob("*.c"), *KERNELS.glob("*.h")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(_compiler_id(compiler) + b"\0" + " ".join(flags).encode() + b"\0" + _cpu_id())
    return digest.hexdigest()


def _compiler_id(compiler: str | None) -> bytes:
    # The path and its file's size and time: another compiler, or this one upgraded, is a new key.
    if compiler is None:
        return b"(none)"
    path = shutil.which(compiler) or compiler
    try:
        stat = os.stat(path)
    except OSError:
        return path.encode()
    return f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()


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
