"""Our C code (``kernels/*.c``), compiled with the system's C compiler into named variants.

Each variant is one set of fixed compiler flags (``VARIANTS``): a generic build any CPU of the
architecture runs, and builds with vector instructions (``avx2``, ``avx2-vnni``, ``avx512``,
``neon-dotprod``, ``neon-i8mm``). ``avx2-vnni-evex`` is for tests and benchmarks only (never
chosen by "auto"): the ``avx2-vnni`` source with AVX-512's encoding of the same 256-bit
instruction, so that AVX-512 machines without AVX-VNNI (Zen 4, Ice Lake) run it.
At run time the best variant the CPU reports supporting is chosen (``choose_variant``): never one
whose instructions the CPU lacks, so a cache directory shared by two machines, or an image built
on one CPU and run on another, runs the right code. ``GEMMA_PERFORMANCE__KERNEL_VARIANT`` forces
one (tests, benchmarks); one this CPU cannot run is a ``ConfigurationError``, not a crash.

A variant is built on first use and cached under ``<cache_dir>/kernels``, keyed by every source and
header, the compiler and the variant's flags (not by the CPU). Processes sharing a cache directory
build an entry once: the build runs under a file lock (the OS drops it when its holder dies, so a
killed build never blocks another), writes a temporary file and renames it into place, and a
process that finds the entry finished uses it. A failed build leaves a marker under the same key:
later starts say so once and do not retry until the compiler or the sources change. With "auto",
a variant whose build fails gives way to the next one this CPU runs (said once, with why).
Nothing here imports torch: the tokenizer loads from it before torch is imported.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from filelock import FileLock, Timeout

from gemma_chat.domain.errors import ConfigurationError

__all__ = [
    "KERNELS",
    "VARIANTS",
    "KernelVariant",
    "build_library",
    "choose_variant",
    "cpu_features",
    "load_library",
    "machine",
    "parse_cpuinfo",
    "resolve_library",
    "variants_for",
]

logger = logging.getLogger(__name__)

KERNELS = Path(__file__).parent / "kernels"
_FLAGS = ["-O3", "-pthread", "-shared", "-fPIC", "-lm"]
LOCK_TIMEOUT = 600.0  # seconds to wait for another process's build of the same entry
_SETTING = "GEMMA_PERFORMANCE__KERNEL_VARIANT"


@dataclass(frozen=True)
class KernelVariant:
    """One build of the kernels: its compiler flags and the CPU features (as Linux's
    /proc/cpuinfo names them) that the code a compiler emits under those flags may use."""

    name: str
    machine: str  # x86_64 | aarch64 | another architecture (one generic build)
    flags: tuple[str, ...]
    requires: frozenset[str] = frozenset()
    automatic: bool = True  # "auto" may choose it (else only when named: tests, benchmarks)


# What compilers emit for C code under -march=haswell: the x86-64-v3 level (AVX2, FMA, F16C,
# BMI1/2, LZCNT ("abm"), MOVBE and the x86-64-v2 level's SSE3 ("pni") to SSE4.2). Its AES,
# RDRAND or FSGSBASE come only from intrinsics, which the kernels do not use.
_X86_64_V2 = frozenset({"pni", "ssse3", "sse4_1", "sse4_2", "popcnt", "cx16", "lahf_lm"})
_X86_64_V3 = _X86_64_V2 | {"avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "abm", "movbe"}
_AVX512 = ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd", "avx512_vnni")

# Each architecture's variants, from the most portable to the best; the names are those the
# setting takes (shared/config/settings.py).
VARIANTS: tuple[KernelVariant, ...] = (
    KernelVariant("generic", "x86_64", ("-march=x86-64",)),
    KernelVariant("avx2", "x86_64", ("-march=haswell",), _X86_64_V3),
    # AVX2 with AVX-VNNI (Intel cores since Alder Lake, Sierra Forest): VEX dpbusd on ymm
    KernelVariant(
        "avx2-vnni", "x86_64", ("-march=haswell", "-mavxvnni"), _X86_64_V3 | {"avx_vnni"}
    ),
    # avx2-vnni's bodies with AVX-512 VL's EVEX dpbusd (ymm only), which AVX-512 VNNI CPUs run:
    # avx2-vnni's products tested and timed where AVX-VNNI is missing, never chosen by "auto".
    KernelVariant(
        "avx2-vnni-evex",
        "x86_64",
        (
            "-march=haswell",
            "-mavx512vnni",
            "-mavx512vl",
            "-mprefer-vector-width=256",
            "-DQ8_AVXVNNI_EVEX",
        ),
        _X86_64_V3 | {"avx512f", "avx512vl", "avx512_vnni"},
        automatic=False,
    ),
    KernelVariant(
        "avx512",
        "x86_64",
        # Explicit -m flags rather than a newer CPU's -march: only these sets are emitted.
        ("-march=haswell", *(f"-m{f.replace('_', '')}" for f in _AVX512), "-mtune=icelake-server"),
        _X86_64_V3 | frozenset(_AVX512),
    ),
    KernelVariant("generic", "aarch64", ("-march=armv8-a",)),
    KernelVariant(
        "neon-dotprod",
        "aarch64",
        ("-march=armv8.2-a+dotprod",),
        # armv8.1-a's LSE atomics, RDM and CRC32 come with armv8.2-a: the compiler may use them.
        frozenset({"asimd", "asimddp", "atomics", "asimdrdm", "crc32"}),
    ),
    KernelVariant(
        "neon-i8mm",
        "aarch64",
        ("-march=armv8.2-a+dotprod+i8mm",),  # neon-dotprod's, and the 8-bit matrix multiplies
        frozenset({"asimd", "asimddp", "atomics", "asimdrdm", "crc32", "i8mm"}),
    ),
)

_built: dict[Path, Path | _Failure] = {}  # this process's answer per entry: worked out once
_building = threading.Lock()  # the tokenizer's prefetch thread asks beside the model's load
_loaded: dict[Path, ctypes.CDLL] = {}


def machine() -> str:
    """This machine's architecture as ``VARIANTS`` names it (x86_64, aarch64, or as reported)."""
    name = platform.machine().lower()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(name, name)


def variants_for(arch: str) -> tuple[KernelVariant, ...]:
    """An architecture's variants, most portable first; a single generic build (the compiler's
    default target) on an architecture without named variants."""
    return tuple(v for v in VARIANTS if v.machine == arch) or (KernelVariant("generic", arch, ()),)


@cache
def cpu_features() -> frozenset[str]:
    """The CPU's features as Linux's /proc/cpuinfo names them ("avx2", "asimddp"...): read from
    there on Linux, from sysctl on macOS; empty elsewhere (the generic build then runs)."""
    if sys.platform == "darwin":
        return _darwin_features()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    return parse_cpuinfo(text)


def parse_cpuinfo(text: str) -> frozenset[str]:
    """The features /proc/cpuinfo lists: every processor's (x86 "flags", ARM "Features"),
    keeping only those all of them have (a heterogeneous machine runs a thread anywhere)."""
    lists = [
        frozenset(line.split(":", 1)[1].split())
        for line in text.splitlines()
        if line.split(":", 1)[0].strip() in ("flags", "Features") and ":" in line
    ]
    return frozenset.intersection(*lists) if lists else frozenset()


# macOS's sysctl names -> /proc/cpuinfo's
_DARWIN_ARM = {
    "hw.optional.AdvSIMD": "asimd",
    "hw.optional.arm.FEAT_DotProd": "asimddp",
    "hw.optional.arm.FEAT_LSE": "atomics",
    "hw.optional.arm.FEAT_RDM": "asimdrdm",
    "hw.optional.armv8_crc32": "crc32",
    "hw.optional.arm.FEAT_I8MM": "i8mm",
}
_DARWIN_X86 = {
    "sse3": "pni",
    "sse4.1": "sse4_1",
    "sse4.2": "sse4_2",
    "avx1.0": "avx",
    "lzcnt": "abm",
    "lahf": "lahf_lm",
    "avx512vnni": "avx512_vnni",
}


def _darwin_features() -> frozenset[str]:
    sysctl = shutil.which("sysctl") or "/usr/sbin/sysctl"
    if machine() == "aarch64":
        found = set()
        for key, name in _DARWIN_ARM.items():
            result = subprocess.run([sysctl, "-n", key], capture_output=True, text=True)
            if result.returncode == 0 and result.stdout.strip() == "1":
                found.add(name)
        return frozenset(found)
    keys = ["machdep.cpu.features", "machdep.cpu.leaf7_features", "machdep.cpu.extfeatures"]
    words = []
    for key in keys:  # one at a time: a key missing on this CPU fails only its own call
        result = subprocess.run([sysctl, "-n", key], capture_output=True, text=True)
        words += result.stdout.lower().split() if result.returncode == 0 else []
    return frozenset(_DARWIN_X86.get(word, word) for word in words)


def choose_variant(
    requested: str = "auto",
    *,
    features: frozenset[str] | None = None,
    arch: str | None = None,
) -> KernelVariant:
    """The variant to run: the best one the CPU supports for "auto", else the one named, if
    the CPU can run it (a ``ConfigurationError`` naming what it lacks otherwise)."""
    arch = arch or machine()
    features = cpu_features() if features is None else features
    candidates = variants_for(arch)
    if requested == "auto":
        return [v for v in candidates if v.automatic and v.requires <= features][-1]
    variant = _named(requested, candidates, arch)
    missing = sorted(variant.requires - features)
    if missing:
        runnable = [v.name for v in candidates if v.requires <= features]
        raise ConfigurationError(
            f"{_SETTING}={requested}: this CPU lacks {', '.join(missing)}, which the "
            f"{requested} kernels use. Use auto, or one this CPU runs: {', '.join(runnable)}."
        )
    return variant


def _named(name: str, candidates: tuple[KernelVariant, ...], arch: str) -> KernelVariant:
    for variant in candidates:
        if variant.name == name:
            return variant
    raise ConfigurationError(
        f"{_SETTING}={name} is not a kernel variant for this machine ({arch}): use auto or one "
        f"of {', '.join(v.name for v in candidates)}."
    )


def build_library(cache_dir: Path, *, variant: str = "auto") -> Path | None:
    """The variant's compiled library (``resolve_library``); None when it cannot be built here."""
    found = resolve_library(cache_dir, variant=variant)
    return None if found is None else found[1]


def resolve_library(cache_dir: Path, *, variant: str = "auto") -> tuple[str, Path] | None:
    """The variant that runs and its compiled library, built on first use; None when none can
    be built here. For "auto", the best variant this CPU runs whose build works: a build that
    fails falls back to the next one the CPU runs (said once, with why). A named variant is
    built whether or not this CPU could run it (building does not run it), with no fallback."""
    arch = machine()
    if variant == "auto":
        runnable = [v for v in variants_for(arch) if v.automatic and v.requires <= cpu_features()]
        candidates = runnable[::-1] or [variants_for(arch)[0]]
    else:
        candidates = [_named(variant, variants_for(arch), arch)]
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    sources = sorted(KERNELS.glob("*.c"))
    directory = Path(cache_dir) / "kernels"
    failures: list[tuple[KernelVariant, _Failure, bool]] = []  # with: first met in this process
    with _building:
        for candidate in candidates:
            flags = [*candidate.flags, *_FLAGS]
            entry = directory / f"{candidate.name}-{_key(compiler, flags)[:16]}"
            fresh = entry not in _built
            if fresh:
                _built[entry] = _build(directory, entry.name, compiler, flags, sources)
            outcome = _built[entry]
            if isinstance(outcome, Path):
                if failures and failures[0][2]:
                    _say_fell_back(failures[0][0], failures[0][1], candidate)
                return candidate.name, outcome
            failures.append((candidate, outcome, fresh))
            if outcome.final:
                break
    _, failure, fresh = failures[0]
    if fresh and not failure.said:
        _say_unavailable(failure.error, failure.marker, remembered=failure.remembered)
    return None


def load_library(cache_dir: Path, *, variant: str = "auto") -> ctypes.CDLL | None:
    """The variant's library (``resolve_library``) loaded with ctypes; None without it. A named
    variant this CPU cannot run is a ``ConfigurationError`` (``choose_variant``)."""
    if variant != "auto":
        choose_variant(variant)  # refused before anything is built
    found = resolve_library(cache_dir, variant=variant)
    if found is None:
        return None
    target = found[1]
    if target not in _loaded:
        try:
            _loaded[target] = ctypes.CDLL(str(target))
        except OSError as exc:  # not a library any more (changed under us): built again next time
            logger.warning("Could not load the native kernels (%s); rebuilding next time", exc)
            target.unlink(missing_ok=True)
            return None
    return _loaded[target]


@dataclass(frozen=True)
class _Failure:
    """Why an entry did not build: the compiler's error (and its marker), or a reason that no
    other variant would build either (``final``: no compiler to run, another process's build
    waited on too long)."""

    error: str
    marker: Path
    remembered: bool = False  # from an earlier process's marker
    final: bool = False
    said: bool = False  # already in the log


def _build(
    directory: Path, name: str, compiler: str | None, flags: list[str], sources: list[Path]
) -> Path | _Failure:
    directory.mkdir(parents=True, exist_ok=True)
    target, failed = directory / f"{name}.so", directory / f"{name}.failed"
    if target.is_file():
        return target
    if failed.is_file():
        return _Failure(failed.read_text(errors="replace"), failed, remembered=True)
    try:
        with FileLock(directory / f"{name}.lock", timeout=LOCK_TIMEOUT):
            if target.is_file():  # another process built it while this one waited
                return target
            if failed.is_file():
                return _Failure(failed.read_text(errors="replace"), failed, remembered=True)
            error, ran = _compile(compiler, flags, sources, target)
            if error:
                _write_atomically(failed, error)
                return _Failure(error, failed, final=not ran)
            return target
    except Timeout:
        logger.warning(
            "Waited %.0f s for another process to build the native kernels (lock %s) and gave "
            "up: running without them this time. If no such build is running, delete the lock.",
            LOCK_TIMEOUT,
            directory / f"{name}.lock",
        )
        return _Failure("timeout", directory / f"{name}.lock", final=True, said=True)


def _compile(
    compiler: str | None, flags: list[str], sources: list[Path], target: Path
) -> tuple[str, bool]:
    """Builds ``target`` (written whole or not at all): the error ("" on success), and whether
    the compiler ran (else no variant can build)."""
    if compiler is None:
        return "no C compiler found: neither CC, cc nor gcc", False
    fd, tmp = tempfile.mkstemp(suffix=".so.tmp", dir=target.parent)
    os.close(fd)
    try:
        command = [compiler, *map(str, sources), "-o", tmp, *flags]
        result = subprocess.run(command, capture_output=True, text=True)
        error = result.stderr.strip() or f"exit status {result.returncode}"
        if result.returncode:
            return error[:2000], True
        os.replace(tmp, target)
        return "", True
    except OSError as exc:
        return f"{compiler}: {exc.strerror or exc}", False
    finally:
        Path(tmp).unlink(missing_ok=True)


def _first_line(error: str) -> str:
    return error.splitlines()[0][:300] if error else "unknown error"


def _say_fell_back(variant: KernelVariant, failure: _Failure, used: KernelVariant) -> None:
    when = "when last tried, " if failure.remembered else ""
    logger.warning(
        "Could not build the %s kernels (%s%s): running the %s kernels instead, which this CPU "
        "also runs (slower where %s's instructions were faster). Not retried until the "
        "compiler or the kernel sources change (remembered in %s).",
        variant.name,
        when,
        _first_line(failure.error),
        used.name,
        variant.name,
        failure.marker,
    )


def _say_unavailable(error: str, marker: Path, *, remembered: bool) -> None:
    when = "when last tried, " if remembered else ""
    logger.warning(
        "Could not build the native kernels (%s%s). The engine runs without them: bfloat16 "
        "weights instead of int8 (about 3x slower) and the Python tokenizer. To fix it, install "
        "a C compiler (e.g. `apt-get install gcc`) or point CC at one. Not retried until the "
        "compiler or the kernel sources change (remembered in %s).",
        when,
        _first_line(error),
        marker,
    )


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    os.replace(tmp, path)


def _key(compiler: str | None, flags: list[str]) -> str:
    # Not the CPU: a variant's flags say what it runs on, whichever machine built it.
    digest = hashlib.sha256()
    for path in sorted([*KERNELS.glob("*.c"), *KERNELS.glob("*.h")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(_compiler_id(compiler) + b"\0" + " ".join(flags).encode())
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
