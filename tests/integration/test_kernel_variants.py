"""The kernels' build variants on this machine: forced through the settings, and cached side by
side in one cache directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gemma_chat import ConfigurationError, GenerationConfig, get_settings
from gemma_chat.infrastructure.llm.engine import native
from tests.integration.conftest import tiny_llm

HELLO = [{"role": "user", "content": "Hello there"}]
GREEDY = GenerationConfig(temperature=0.0, max_new_tokens=16)


def runnable() -> list[str]:
    """The variants this CPU runs, most portable first."""
    features = native.cpu_features()
    return [v.name for v in native.variants_for(native.machine()) if v.requires <= features]


def not_runnable() -> list[native.KernelVariant]:
    features = native.cpu_features()
    return [v for v in native.variants_for(native.machine()) if not v.requires <= features]


@pytest.mark.asyncio
async def test_every_variant_this_cpu_runs_answers_with_the_same_greedy_text(
    tiny_model_dir: Path,
) -> None:
    # int8 everywhere: the generic build's plain loops give the vector builds' bits.
    answers = {}
    for variant in runnable():
        llm = tiny_llm(
            tiny_model_dir,
            quantization="int8",
            performance={"engine": "native", "kernel_variant": variant},
        )
        await llm.load()
        try:
            info = llm.get_model_info()
            assert (info["kernels"], info["weights"]) == (variant, "q8")
            answers[variant] = await llm.generate(HELLO, GREEDY)
        finally:
            await llm.unload()
    assert answers[runnable()[0]].text
    assert len({(a.text, a.finish_reason) for a in answers.values()}) == 1, answers


@pytest.mark.asyncio
async def test_a_forced_variant_is_the_only_library_built_and_the_tokenizers_too(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gemma_chat.infrastructure.llm.engine import converted_store

    # the least capable variant: never the one "auto" would pick where the CPU runs more
    variant = runnable()[0]
    asked: list[str] = []
    opened = converted_store.open_tokenizer

    def open_tokenizer(directory: Path, variant: str = "auto") -> Any:
        asked.append(variant)
        return opened(directory, variant)

    monkeypatch.setattr(converted_store, "open_tokenizer", open_tokenizer)
    llm = tiny_llm(
        tiny_model_dir,
        quantization="int8",
        performance={"engine": "native", "kernel_variant": variant},
    )
    await llm.load()
    try:
        assert (await llm.generate(HELLO, GREEDY)).text
        kernels = llm.get_model_info()["kernels"]
    finally:
        await llm.unload()
    assert kernels == variant
    assert asked == [variant]  # the tokenizer asks for the kernels' library, not auto's
    built = {p.name.split("-")[0] for p in (get_settings().cache_dir / "kernels").glob("*.so")}
    assert built == {variant}  # the auto variant not even built


@pytest.mark.asyncio
async def test_auto_reports_the_best_variant_and_int8_where_it_has_vector_products(
    tiny_model_dir: Path,
) -> None:
    llm = tiny_llm(tiny_model_dir, performance={"engine": "native"})
    await llm.load()
    try:
        info = llm.get_model_info()
    finally:
        await llm.unload()
    best = native.choose_variant()
    automatic = [v for v in native.variants_for(native.machine()) if v.automatic]
    assert best.name == [v.name for v in automatic if v.requires <= native.cpu_features()][-1]
    if best.name == "generic":  # no vector int8 products: bfloat16, and no kernels in use
        assert (info["weights"], info["kernels"]) == ("bfloat16", None)
    else:
        assert (info["weights"], info["kernels"]) == ("q8", best.name)


@pytest.mark.asyncio
async def test_a_forced_generic_variant_keeps_bfloat16_as_the_automatic_choice(
    tiny_model_dir: Path,
) -> None:
    llm = tiny_llm(tiny_model_dir, performance={"engine": "native", "kernel_variant": "generic"})
    await llm.load()
    try:
        info = llm.get_model_info()
        assert (await llm.generate(HELLO, GREEDY)).text
    finally:
        await llm.unload()
    if native.machine() == "x86_64":  # plain loops: slower than bfloat16
        assert (info["weights"], info["kernels"]) == ("bfloat16", None)


@pytest.mark.asyncio
async def test_forcing_a_variant_this_cpu_cannot_run_is_a_configuration_error(
    tiny_model_dir: Path,
) -> None:
    missing = not_runnable()
    if not missing:
        pytest.skip("this CPU runs every variant of its architecture")
    variant = missing[-1]
    llm = tiny_llm(tiny_model_dir, performance={"engine": "native", "kernel_variant": variant.name})
    with pytest.raises(ConfigurationError) as raised:
        await llm.load()
    lacking = sorted(variant.requires - native.cpu_features())
    assert f"KERNEL_VARIANT={variant.name}" in str(raised.value)
    assert ", ".join(lacking) in str(raised.value)
    assert not llm.is_loaded


def test_a_shared_cache_holds_one_entry_per_variant_whatever_cpu_built_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    variants = [v.name for v in native.variants_for(native.machine())]
    built = {name: native.build_library(tmp_path, variant=name) for name in variants}
    assert all(path is not None for path in built.values()), built
    assert sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "kernels").glob("*.so")) == sorted(
        variants
    )
    # Another process on another CPU (nothing known about it) finds the same entries: the key is
    # the sources, the compiler and the variant's flags, not the CPU.
    monkeypatch.setattr(native, "_built", {})
    monkeypatch.setattr(native, "cpu_features", lambda: frozenset())
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "kernels").glob("*.so")}
    for name in variants:
        assert native.build_library(tmp_path, variant=name) == built[name]
    assert native.build_library(tmp_path) == built["generic"]  # auto, knowing nothing
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "kernels").glob("*.so")} == stamps


def test_loading_a_variant_this_cpu_cannot_run_is_refused_before_anything_runs(
    tmp_path: Path,
) -> None:
    from gemma_chat.infrastructure.llm.engine.q8 import load_kernels

    missing = not_runnable()
    if not missing:
        pytest.skip("this CPU runs every variant of its architecture")
    with pytest.raises(ConfigurationError, match=missing[-1].name):
        load_kernels(tmp_path, variant=missing[-1].name)
    with pytest.raises(ConfigurationError, match=missing[-1].name):
        native.load_library(tmp_path, variant=missing[-1].name)
    assert not (tmp_path / "kernels").exists()  # not even built
