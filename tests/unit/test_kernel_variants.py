"""Which build of the C kernels runs on which CPU (native.choose_variant), from its features."""

from __future__ import annotations

import pytest

from gemma_chat import ConfigurationError, get_settings
from gemma_chat.infrastructure.llm.engine.native import (
    VARIANTS,
    choose_variant,
    parse_cpuinfo,
    variants_for,
)

# Real CPUs' /proc/cpuinfo flags (the ones that matter, and some that do not)
SSE_ONLY = frozenset({"sse2", "pni", "ssse3", "sse4_1", "sse4_2", "popcnt", "cx16", "lahf_lm"})
ZEN3 = SSE_ONLY | {"avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "abm", "movbe", "aes", "sha_ni"}
ICELAKE = ZEN3 | {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd", "avx512_vnni"}
ARMV8_0 = frozenset({"fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32", "cpuid"})
GRAVITON2 = ARMV8_0 | {"atomics", "fphp", "asimdhp", "asimdrdm", "lrcpc", "dcpop", "asimddp"}
CORTEX_A72 = ARMV8_0


@pytest.mark.parametrize(
    ("features", "arch", "expected"),
    [
        (SSE_ONLY, "x86_64", "generic"),
        (ZEN3, "x86_64", "avx2"),
        (ICELAKE, "x86_64", "avx512"),
        (ZEN3 - {"fma"}, "x86_64", "generic"),  # AVX2 without FMA: not the avx2 build
        (ZEN3 - {"movbe"}, "x86_64", "generic"),  # -march=haswell may emit movbe
        (ICELAKE - {"avx512_vnni"}, "x86_64", "avx2"),  # Skylake-X: AVX-512 without VNNI
        (frozenset(), "x86_64", "generic"),  # nothing known: the build every x86-64 runs
        (GRAVITON2, "aarch64", "neon-dotprod"),
        (CORTEX_A72, "aarch64", "generic"),
        (frozenset(), "riscv64", "generic"),
    ],
)
def test_auto_runs_the_best_variant_the_cpu_has_every_feature_of(
    features: frozenset[str], arch: str, expected: str
) -> None:
    chosen = choose_variant("auto", features=features, arch=arch)
    assert chosen.name == expected
    assert chosen.requires <= features
    assert chosen.machine == arch


def test_a_named_variant_the_cpu_can_run_is_chosen() -> None:
    assert choose_variant("generic", features=ICELAKE, arch="x86_64").name == "generic"
    assert choose_variant("avx2", features=ICELAKE, arch="x86_64").flags == ("-march=haswell",)


def test_a_named_variant_the_cpu_cannot_run_is_a_configuration_error_naming_what_it_lacks() -> None:
    with pytest.raises(ConfigurationError) as raised:
        choose_variant("avx512", features=ZEN3, arch="x86_64")
    message = str(raised.value)
    assert "GEMMA_PERFORMANCE__KERNEL_VARIANT=avx512" in message
    for flag in ("avx512f", "avx512bw", "avx512vl", "avx512_vnni"):
        assert flag in message
    assert "generic, avx2" in message  # what it could use instead
    with pytest.raises(ConfigurationError, match="asimddp"):
        choose_variant("neon-dotprod", features=CORTEX_A72, arch="aarch64")


def test_a_variant_of_another_architecture_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="not a kernel variant for this machine"):
        choose_variant("neon-dotprod", features=ZEN3, arch="x86_64")
    with pytest.raises(ConfigurationError, match="aarch64"):
        choose_variant("avx2", features=GRAVITON2, arch="aarch64")


def test_each_architecture_has_a_generic_variant_that_needs_nothing() -> None:
    for arch in ("x86_64", "aarch64", "ppc64le"):
        assert variants_for(arch)[0].name == "generic"
        assert variants_for(arch)[0].requires == frozenset()
    # Fixed flags, never the building machine's CPU
    assert not any("native" in flag for variant in VARIANTS for flag in variant.flags)


def test_cpuinfo_features_are_those_every_processor_has() -> None:
    text = (
        "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n\n"
        "processor\t: 1\nflags\t\t: fpu sse2 avx2\n\n"
    )
    assert parse_cpuinfo(text) == {"fpu", "sse2", "avx2"}
    arm = "processor\t: 0\nFeatures\t: fp asimd asimddp\nCPU part\t: 0xd0c\n"
    assert parse_cpuinfo(arm) == {"fp", "asimd", "asimddp"}
    assert parse_cpuinfo("") == frozenset()


def test_the_setting_takes_auto_or_a_variant_name(monkeypatch: pytest.MonkeyPatch) -> None:
    assert get_settings().performance.kernel_variant == "auto"
    for name in {variant.name for variant in VARIANTS}:
        assert get_settings(performance={"kernel_variant": name}).performance.kernel_variant == name
    with pytest.raises(ConfigurationError, match="KERNEL_VARIANT='native'"):
        get_settings(performance={"kernel_variant": "native"})
    monkeypatch.setenv("GEMMA_PERFORMANCE__KERNEL_VARIANT", "avx2")
    assert get_settings().performance.kernel_variant == "avx2"
