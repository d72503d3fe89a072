"""Which build of the C kernels runs on which CPU (native.choose_variant), from its features."""

from __future__ import annotations

import subprocess

import pytest

from gemma_chat import ConfigurationError, get_settings
from gemma_chat.infrastructure.llm.engine import native
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
ALDER_LAKE = ZEN3 | {"avx_vnni"}  # AVX2 and AVX-VNNI, no AVX-512
SAPPHIRE_RAPIDS = ICELAKE | {"avx_vnni"}
ARMV8_0 = frozenset({"fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32", "cpuid"})
GRAVITON2 = ARMV8_0 | {"atomics", "fphp", "asimdhp", "asimdrdm", "lrcpc", "dcpop", "asimddp"}
CORTEX_A72 = ARMV8_0
NEOVERSE_V1 = GRAVITON2 | {"sve", "svei8mm", "i8mm", "bf16", "asimdfhm"}  # Graviton3


@pytest.mark.parametrize(
    ("features", "arch", "expected"),
    [
        (SSE_ONLY, "x86_64", "generic"),
        (ZEN3, "x86_64", "avx2"),
        (ICELAKE, "x86_64", "avx512"),
        (ALDER_LAKE, "x86_64", "avx2-vnni"),
        (SAPPHIRE_RAPIDS, "x86_64", "avx512"),
        (ALDER_LAKE - {"movbe"}, "x86_64", "generic"),
        # AVX-512 VL's 256-bit dpbusd without AVX512BW: the test-only EVEX build is never auto's
        (ICELAKE - {"avx512bw"}, "x86_64", "avx2"),
        (ZEN3 - {"fma"}, "x86_64", "generic"),  # AVX2 without FMA: not the avx2 build
        (ZEN3 - {"movbe"}, "x86_64", "generic"),  # -march=haswell may emit movbe
        (ICELAKE - {"avx512_vnni"}, "x86_64", "avx2"),  # Skylake-X: AVX-512 without VNNI
        (frozenset(), "x86_64", "generic"),  # nothing known: the build every x86-64 runs
        (GRAVITON2, "aarch64", "neon-dotprod"),
        (NEOVERSE_V1, "aarch64", "neon-i8mm"),
        (NEOVERSE_V1 - {"i8mm"}, "aarch64", "neon-dotprod"),  # SVE's svei8mm is not NEON's
        (ARMV8_0 | {"i8mm"}, "aarch64", "generic"),  # i8mm without the dot product
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


# /proc/cpuinfo of a Graviton3 (Neoverse V1) and a Graviton2 (Neoverse N1), one processor each
# (a backslash at a line end joins the Features line, as the kernel writes it)
GRAVITON3_CPUINFO = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm \
jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca \
pacg dcpodp svei8mm svebf16 i8mm bf16 dgh rng
CPU implementer\t: 0x41
CPU architecture: 8
CPU part\t: 0xd40
"""
GRAVITON2_CPUINFO = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm \
lrcpc dcpop asimddp ssbs
CPU implementer\t: 0x41
CPU part\t: 0xd0c
"""


def test_the_i8mm_variant_runs_where_cpuinfo_lists_i8mm_and_the_dotprod_one_otherwise() -> None:
    with_i8mm, without = parse_cpuinfo(GRAVITON3_CPUINFO), parse_cpuinfo(GRAVITON2_CPUINFO)
    assert {"i8mm", "asimddp"} <= with_i8mm
    assert "i8mm" not in without
    assert choose_variant(features=with_i8mm, arch="aarch64").name == "neon-i8mm"
    assert choose_variant(features=without, arch="aarch64").name == "neon-dotprod"
    # every processor must have it: a machine with one core without i8mm runs the dotprod build
    mixed = GRAVITON3_CPUINFO + "\n" + GRAVITON3_CPUINFO.replace(" i8mm ", " ")
    assert choose_variant(features=parse_cpuinfo(mixed), arch="aarch64").name == "neon-dotprod"
    # forcible by name: the dotprod build on an i8mm CPU, not the i8mm build on one without
    assert choose_variant("neon-dotprod", features=with_i8mm, arch="aarch64").name == "neon-dotprod"
    with pytest.raises(ConfigurationError, match="lacks i8mm") as raised:
        choose_variant("neon-i8mm", features=without, arch="aarch64")
    assert "generic, neon-dotprod" in str(raised.value)
    i8mm = next(v for v in VARIANTS if v.name == "neon-i8mm")
    assert i8mm.flags == ("-march=armv8.2-a+dotprod+i8mm",)


@pytest.mark.parametrize(("i8mm", "expected"), [("1", "neon-i8mm"), ("0", "neon-dotprod")])
def test_macos_reports_i8mm_through_sysctl(
    monkeypatch: pytest.MonkeyPatch, i8mm: str, expected: str
) -> None:
    # Apple M2 and later report FEAT_I8MM 1, M1 0; every Apple-silicon Mac has the rest
    values = {
        "hw.optional.AdvSIMD": "1",
        "hw.optional.arm.FEAT_DotProd": "1",
        "hw.optional.arm.FEAT_LSE": "1",
        "hw.optional.arm.FEAT_RDM": "1",
        "hw.optional.armv8_crc32": "1",
        "hw.optional.arm.FEAT_I8MM": i8mm,
    }

    def sysctl(command: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        key = command[-1]
        known = key in values
        return subprocess.CompletedProcess(command, 0 if known else 1, values.get(key, ""), "")

    monkeypatch.setattr(native, "machine", lambda: "aarch64")
    monkeypatch.setattr(native.subprocess, "run", sysctl)
    features = native._darwin_features()
    assert ("i8mm" in features) == (i8mm == "1")
    assert choose_variant(features=features, arch="aarch64").name == expected


def test_the_avx_vnni_builds_run_only_where_the_cpu_has_their_instructions() -> None:
    vnni = choose_variant("avx2-vnni", features=ALDER_LAKE, arch="x86_64")
    assert vnni.flags == ("-march=haswell", "-mavxvnni")
    assert vnni.automatic
    with pytest.raises(ConfigurationError, match="lacks avx_vnni"):
        choose_variant("avx2-vnni", features=ICELAKE, arch="x86_64")  # AVX-512: no AVX-VNNI
    # the EVEX build: forced on AVX-512 VNNI machines (tests, benchmarks), never automatic
    evex = choose_variant("avx2-vnni-evex", features=ICELAKE, arch="x86_64")
    assert not evex.automatic
    assert "-DQ8_AVXVNNI_EVEX" in evex.flags
    with pytest.raises(ConfigurationError) as raised:
        choose_variant("avx2-vnni-evex", features=ALDER_LAKE, arch="x86_64")
    assert "avx512_vnni" in str(raised.value)
    assert "avx512vl" in str(raised.value)
    for features in (ZEN3, ALDER_LAKE, ICELAKE, SAPPHIRE_RAPIDS, ICELAKE - {"avx512bw"}):
        assert choose_variant(features=features, arch="x86_64").name != "avx2-vnni-evex"
