"""The converted-model cache shared by processes: one conversion, no lost race, no stale lock."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gemma_chat
from gemma_chat import ModelLoadError
from gemma_chat.infrastructure.llm.engine.converted_store import ConvertedModelStore, WeightFormat
from gemma_chat.infrastructure.llm.loading.model_source import resolve_model_source, source_digest

# A process that converts the tiny model into a cache directory once every process given to
# the test has started (so that they really race), counting its conversions in a log.
CONVERTER = """
import os, sys, time
from pathlib import Path

import torch

from gemma_chat.infrastructure.llm.engine import converted_store as cs
from gemma_chat.infrastructure.llm.loading.model_source import resolve_model_source

model_dir, cache, rendezvous = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
processes = int(sys.argv[4])
(rendezvous / f"ready-{os.getpid()}").touch()
deadline = time.monotonic() + 120
while len(list(rendezvous.glob("ready-*"))) < processes and time.monotonic() < deadline:
    time.sleep(0.01)
convert = cs.ConvertedModelStore.convert

def counted(self, *args, **kwargs):
    with (rendezvous / "conversions.log").open("a") as log:
        log.write(f"{os.getpid()}\\n")
    time.sleep(0.5)  # the others reach the entry while this one builds it
    return convert(self, *args, **kwargs)

cs.ConvertedModelStore.convert = counted
store = cs.ConvertedModelStore(cache)
weights = cs.WeightFormat.floating(torch.float32)
converted = store.load_or_convert(resolve_model_source(model_dir), weights, progress=False)
print(converted.directory)
"""

# Holds a lock file until it is killed.
HOLDER = """
import sys, time
from filelock import FileLock

lock = FileLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
time.sleep(600)
"""


def python_env() -> dict[str, str]:
    src = str(Path(gemma_chat.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


def test_two_processes_converting_into_one_empty_cache_convert_once(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    cache, rendezvous = tmp_path / "cache", tmp_path / "rendezvous"
    rendezvous.mkdir()
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                CONVERTER,
                str(tiny_model_dir),
                str(cache),
                str(rendezvous),
                "2",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=python_env(),
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=300) for p in processes]
    for process, (_, err) in zip(processes, results, strict=True):
        assert process.returncode == 0, err[-3000:]
    directories = {out.strip() for out, _ in results}
    assert len(directories) == 1  # both use the same entry
    assert len((rendezvous / "conversions.log").read_text().split()) == 1
    models = cache / "models"
    assert not list(models.glob(".converting-*"))  # nothing half-written left behind


def test_a_lock_left_by_a_killed_process_does_not_block(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    source = resolve_model_source(str(tiny_model_dir))
    weights = WeightFormat.floating(torch.float32)
    store = ConvertedModelStore(tmp_path, lock_timeout=0.5)
    digest = source_digest(source, tmp_path)
    assert digest is not None
    store.root.mkdir(parents=True)
    lock_file = store.root / f"{store.key(digest, weights)}.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock_file)],
        stdout=subprocess.PIPE,
        text=True,
        env=python_env(),
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "locked\n"
        # While its holder lives, a lock that is never released ends in a clear error.
        with pytest.raises(ModelLoadError, match="another process converting"):
            store.load_or_convert(source, weights, progress=False)
    finally:
        holder.kill()
        holder.communicate()
    assert lock_file.exists()  # the file stays; the lock died with its process
    converted = store.load_or_convert(source, weights, progress=False)
    assert converted.directory.is_dir()


def test_a_conversion_that_loses_the_rename_uses_the_entry_already_there(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # A process without the lock (an older gemma-chat) may finish the same entry first.
    source = resolve_model_source(str(tiny_model_dir))
    weights = WeightFormat.floating(torch.float32)
    store = ConvertedModelStore(tmp_path)
    first = store.load_or_convert(source, weights, progress=False)
    store.convert(source, weights, first.directory, progress=False)
    assert not list(store.root.glob(".converting-*"))
    again = store.load(first.directory, weights)
    assert again.directory == first.directory


def test_a_conversion_gives_its_freed_heap_back_and_a_load_does_not_trim(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gemma_chat.infrastructure.llm.engine import converted_store

    trims: list[str] = []
    monkeypatch.setattr(converted_store, "give_back_freed_heap", lambda: trims.append("trim"))
    source = resolve_model_source(str(tiny_model_dir))
    weights = WeightFormat.floating(torch.float32)
    store = ConvertedModelStore(tmp_path)
    store.load_or_convert(source, weights, progress=False)
    assert trims == ["trim"]
    store.load_or_convert(source, weights, progress=False)  # found: loaded, nothing freed
    assert trims == ["trim"]


def resident_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


@pytest.mark.skipif(
    not Path("/proc/self/statm").exists() or os.confstr("CS_GNU_LIBC_VERSION") is None,
    reason="resident memory read from /proc with glibc's malloc_trim (Linux, glibc)",
)
def test_the_freed_heap_goes_back_to_the_system() -> None:
    from gemma_chat.infrastructure.heap import give_back_freed_heap

    # 4,000 blocks of 100 KB (below glibc's mmap threshold: heap); every other one is kept, so
    # the freed ones are holes between live blocks that no free() can give back by shrinking
    # the heap's top (a lone block kept after them could land in an older hole, and then the
    # top shrank by itself): they stay resident until trimmed
    blocks = [bytearray(os.urandom(16)) * 6_400 for _ in range(4_000)]
    before = resident_mb()
    del blocks[::2]
    freed = resident_mb()
    give_back_freed_heap()
    after = resident_mb()
    assert before - freed < 50  # glibc kept them
    assert freed - after > 150
    assert len(blocks) == 2_000
