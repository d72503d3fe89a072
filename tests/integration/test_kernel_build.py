"""The kernels' build cache (native.py): processes sharing it, and a machine without a compiler."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gemma_chat.infrastructure.llm.engine import native

BUILDER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("native", sys.argv[1])
native = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = native  # as an import does (its dataclass looks itself up there)
spec.loader.exec_module(native)
print(native.build_library(sys.argv[2]))
"""


def fake_compiler(
    path: Path, log: Path, *, fails: bool = False, seconds: float = 0, fails_on: str = ""
) -> Path:
    """A ``CC`` that records each run in ``log``; it writes a stand-in library (these tests
    only build, they do not load) or fails as a broken compiler does (always, or when one of
    its arguments is ``fails_on``)."""
    body = f'echo run >> "{log}"\nsleep {seconds}\n'
    if fails_on:
        body += (
            f'for a in "$@"; do [ "$a" = "{fails_on}" ] && '
            f'{{ echo "error: unknown option {fails_on}" >&2; exit 1; }}; done\n'
        )
    if fails:
        body += 'echo "error: this compiler is broken" >&2\nexit 1\n'
    else:
        body += (
            'out=""; prev=""\nfor a in "$@"; do [ "$prev" = "-o" ] && out="$a"; prev="$a"; done\n'
        )
        body += 'printf built > "$out"\n'
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def runs(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.fixture
def new_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget what this process has worked out, as a process started afresh would."""
    monkeypatch.setattr(native, "_built", {})


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_two_processes_building_at_once_both_get_the_library_built_once(tmp_path: Path) -> None:
    log = tmp_path / "compiler.log"
    env = {**os.environ, "CC": str(fake_compiler(tmp_path / "cc", log, seconds=2))}
    cache = tmp_path / "cache"
    command = [sys.executable, "-c", BUILDER, native.__file__, str(cache)]
    processes = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outputs = [p.communicate(timeout=60)[0].strip() for p in processes]
    assert [p.returncode for p in processes] == [0, 0]
    assert outputs[0] == outputs[1]
    assert outputs[0].endswith(".so")
    assert Path(outputs[0]).read_text() == "built"
    assert runs(log) == 1  # the second process waited for the first one's build and used it
    assert sorted(p.suffix for p in (cache / "kernels").iterdir()) == [".lock", ".so"]


def test_a_failed_build_is_said_once_remembered_and_retried_when_the_compiler_changes(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    new_process: None,
) -> None:
    log = tmp_path / "compiler.log"
    compiler = fake_compiler(tmp_path / "cc", log, fails=True)
    monkeypatch.setenv("CC", str(compiler))
    with caplog.at_level(logging.WARNING):
        assert native.load_library(tmp_path) is None
        assert native.build_library(tmp_path) is None  # the tokenizer asks too: said once
    [warning] = warnings_of(caplog)
    assert warning.startswith("Could not build the native kernels (error: this compiler is broken)")
    for said in ("bfloat16 weights instead of int8", "3x slower", "install a C compiler"):
        assert said in warning
    # auto tried each variant this CPU runs, best first, once each (a marker each)
    tried = len(runnable())
    markers = sorted((tmp_path / "kernels").glob("*.failed"))
    assert len(markers) == tried
    assert all("this compiler is broken" in m.read_text() for m in markers)
    marker = next(m for m in markers if m.name.startswith(runnable()[-1].name))
    assert runs(log) == tried

    monkeypatch.setattr(native, "_built", {})  # the next start
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert native.load_library(tmp_path) is None
    assert runs(log) == tried  # not retried
    [warning] = warnings_of(caplog)
    assert "when last tried" in warning
    assert str(marker) in warning

    fake_compiler(compiler, log, fails=False)  # the compiler changed (fixed, upgraded)
    monkeypatch.setattr(native, "_built", {})
    assert native.build_library(tmp_path) is not None
    assert runs(log) == tried + 1


def runnable() -> list[native.KernelVariant]:
    """The variants "auto" may run on this CPU (not those only tests and benchmarks name)."""
    features = native.cpu_features()
    return [
        v for v in native.variants_for(native.machine()) if v.automatic and v.requires <= features
    ]


def test_auto_falls_back_to_the_next_variant_this_cpu_runs_when_a_build_fails(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    new_process: None,
) -> None:
    variants = runnable()
    if len(variants) < 2:
        pytest.skip("this CPU runs one variant: nothing to fall back to")
    best, next_best = variants[-1], variants[-2]
    # an option only the best variant's flags have (e.g. -mavx512vnni), which this compiler lacks
    [option] = sorted(set(best.flags) - set(next_best.flags))[-1:]
    log = tmp_path / "compiler.log"
    monkeypatch.setenv("CC", str(fake_compiler(tmp_path / "cc", log, fails_on=option)))
    with caplog.at_level(logging.WARNING):
        found = native.resolve_library(tmp_path)
        assert native.build_library(tmp_path) == (found[1] if found else None)  # said once
    assert found is not None
    assert found[0] == next_best.name
    assert found[1].name.startswith(f"{next_best.name}-")
    [warning] = warnings_of(caplog)
    assert warning.startswith(f"Could not build the {best.name} kernels (error: unknown option")
    assert f"running the {next_best.name} kernels instead" in warning
    assert runs(log) == 2

    monkeypatch.setattr(native, "_built", {})  # the next start: the failure is remembered
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert native.build_library(tmp_path) == found[1]
    assert runs(log) == 2
    [warning] = warnings_of(caplog)
    assert "when last tried" in warning
    # a variant named in the settings does not fall back
    monkeypatch.setattr(native, "_built", {})
    with caplog.at_level(logging.WARNING):
        assert native.build_library(tmp_path, variant=best.name) is None


def test_without_any_compiler_one_warning_and_a_marker(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    new_process: None,
) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert native.load_library(tmp_path) is None
    [warning] = warnings_of(caplog)
    assert "No such file or directory" in warning
    assert "point CC at one" in warning
    assert len(list((tmp_path / "kernels").glob("*.failed"))) == 1
    assert not list((tmp_path / "kernels").glob("*.so*"))


def test_a_lock_held_too_long_gives_up_clearly_and_a_killed_holder_blocks_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    new_process: None,
) -> None:
    log = tmp_path / "compiler.log"
    compiler = fake_compiler(tmp_path / "cc", log)
    monkeypatch.setenv("CC", str(compiler))
    monkeypatch.setattr(native, "LOCK_TIMEOUT", 0.5)
    variant = native.choose_variant()
    key = native._key(str(compiler), [*variant.flags, *native._FLAGS])
    lock = tmp_path / "kernels" / f"{variant.name}-{key[:16]}.lock"
    lock.parent.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from filelock import FileLock; lock = FileLock(sys.argv[1]);"
            " lock.acquire();"
            " print('held', flush=True); time.sleep(60)",
            str(lock),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with caplog.at_level(logging.WARNING):
            assert native.build_library(tmp_path) is None
        [warning] = warnings_of(caplog)
        assert "gave up" in warning
        assert str(lock) in warning
        assert not list(lock.parent.glob("*.failed"))  # a wait is not a failure: tried again
    finally:
        holder.kill()  # as a build killed midway
        holder.communicate()
    monkeypatch.setattr(native, "_built", {})
    assert native.build_library(tmp_path) is not None
    assert runs(log) == 1
