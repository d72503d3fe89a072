"""The int8 kernels: accuracy, batch invariance, the cached build and its fallback."""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import shutil
import signal
import subprocess
import time
import warnings
from pathlib import Path

import pytest
import torch

from gemma_chat.infrastructure.llm.engine import native
from gemma_chat.infrastructure.llm.engine import q8 as q8_module
from gemma_chat.infrastructure.llm.engine.config import Gemma3Config
from gemma_chat.infrastructure.llm.engine.kv_cache import KVCache
from gemma_chat.infrastructure.llm.engine.model import Gemma3Model
from gemma_chat.infrastructure.llm.engine.native import KERNELS, cpu_features
from gemma_chat.infrastructure.llm.engine.q8 import (
    Q4Linear,
    Q8Embedding,
    Q8Kernels,
    Q8Linear,
    empty_q8_model,
    hold_in_huge_pages_once_loaded,
    load_kernels,
    quantize_model,
    quantize_weight,
)


def cpu_has(*flags: str) -> bool:
    if platform.machine() != "x86_64":
        return False
    words = set(Path("/proc/cpuinfo").read_text().split())
    return all(flag in words for flag in flags)


@pytest.fixture(scope="module", params=["auto", "avx2", "avx2-vnni-evex"])
def each_build(
    request: pytest.FixtureRequest, kernels: Q8Kernels, tmp_path_factory: pytest.TempPathFactory
) -> Q8Kernels:
    """The variant this CPU gets, the AVX2 one (its own bodies where the CPU has AVX-512), and
    the AVX-VNNI products (in their EVEX encoding, which AVX-512 VNNI CPUs run)."""
    if request.param == "auto":
        return kernels
    if request.param == "avx2":
        if not cpu_has("avx2", "fma", "f16c"):
            pytest.skip("this CPU cannot run an AVX2 build")
        built = load_kernels(tmp_path_factory.mktemp("haswell"), variant="avx2")
        assert built is not None
        return built
    return built_variant(tmp_path_factory, request.param)


def built_variant(tmp_path_factory: pytest.TempPathFactory, name: str) -> Q8Kernels:
    """A variant's kernels, built once per test session (skipped where this CPU cannot run it)."""
    if platform.machine() != "x86_64":
        pytest.skip("x86-64 builds")
    variant = next(v for v in native.variants_for(native.machine()) if v.name == name)
    lacking = sorted(variant.requires - cpu_features())
    if lacking:
        pytest.skip(f"this CPU lacks {', '.join(lacking)} for the {name} build")
    built = load_kernels(tmp_path_factory.getbasetemp() / "variants", variant=name)
    assert built is not None
    return built


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize(("n", "k"), [(96, 64), (640, 2048), (1536, 640)])
def test_the_product_is_close_to_the_float_product(kernels: Q8Kernels, n: int, k: int) -> None:
    gen = torch.Generator().manual_seed(n)
    w, x = torch.randn(n, k, generator=gen), torch.randn(5, k, generator=gen)
    layer = Q8Linear.from_weight(kernels, w)
    assert relative_error(layer(x), x @ w.T) < 0.015


def test_a_row_gets_the_same_bits_alone_or_in_a_batch(kernels: Q8Kernels) -> None:
    gen = torch.Generator().manual_seed(1)
    layer = Q8Linear.from_weight(kernels, torch.randn(300, 640, generator=gen))
    x = torch.randn(9, 640, generator=gen)
    batched = layer(x)
    for i in range(9):
        assert torch.equal(layer(x[i : i + 1])[0], batched[i])


def test_leading_dimensions_are_kept(kernels: Q8Kernels) -> None:
    layer = Q8Linear.from_weight(kernels, torch.randn(40, 64))
    assert layer(torch.randn(2, 3, 64)).shape == (2, 3, 40)


def test_quantized_weights_round_trip_within_half_a_step() -> None:
    w = torch.randn(8, 64)
    q, scale = quantize_weight(w)
    restored = q.float().view(8, 2, 32) * scale.unsqueeze(-1)
    step = scale.unsqueeze(-1).expand(8, 2, 32)
    assert bool(((restored - w.view(8, 2, 32)).abs() <= step / 2 + 1e-6).all())
    assert quantize_weight(torch.zeros(2, 32))[0].abs().sum() == 0


def test_the_embedding_reads_rows_of_the_int8_table(kernels: Q8Kernels) -> None:
    w = torch.randn(50, 64)
    table = Q8Linear.from_weight(kernels, w)
    rows = Q8Embedding(table)(torch.tensor([[3, 7]]))
    assert rows.shape == (1, 2, 64)
    assert relative_error(rows[0], w[[3, 7]]) < 0.01
    assert list(Q8Embedding(table).state_dict()) == []  # the table is saved once, as lm_head


def test_the_build_is_cached_and_reused(tmp_path: Path) -> None:
    assert load_kernels(tmp_path) is not None
    built = list((tmp_path / "kernels").glob("*.so"))
    stamp = built[0].stat().st_mtime_ns
    assert load_kernels(tmp_path) is not None
    assert [p.stat().st_mtime_ns for p in (tmp_path / "kernels").glob("*.so")] == [stamp]


def test_without_a_compiler_the_kernels_are_reported_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with caplog.at_level(logging.WARNING):
        assert load_kernels(tmp_path) is None
    assert "Could not build the native kernels" in caplog.text
    assert not list((tmp_path / "kernels").glob("*.so"))


@pytest.mark.asyncio
async def test_the_engine_uses_int8_by_default_and_bfloat16_without_a_compiler(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gemma_chat import ConfigurationError, GemmaLLM, get_settings

    def llm(**model: str) -> GemmaLLM:
        return GemmaLLM(get_settings(model={"name": str(tiny_model_dir), **model}))

    default = llm()
    await default.load()
    assert default.get_model_info()["weights"] == "q8"
    assert default.get_model_info()["quantization"] == "int8"
    monkeypatch.setenv("CC", "/no/such/cc")
    monkeypatch.setenv("GEMMA_CACHE_DIR", str(tiny_model_dir.parent / "no-kernels"))
    fallback = llm()
    await fallback.load()
    assert fallback.get_model_info()["weights"] == "bfloat16"
    with pytest.raises(ConfigurationError, match="C compiler"):
        await llm(quantization="int8").load()


def test_without_vnni_the_default_is_bfloat16_and_int8_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gemma_chat.infrastructure.llm.engine.generator as generator_module
    from gemma_chat import get_settings
    from gemma_chat.infrastructure.llm.loading.precision import PrecisionPlan

    portable = load_kernels(tmp_path, variant="generic")
    assert portable is not None
    if platform.machine() == "x86_64":
        assert not portable.vectorized  # plain loops: no AVX-512 VNNI in a generic build
    portable.vectorized = False
    monkeypatch.setattr(generator_module, "load_kernels", lambda *a, **k: portable)
    settings = get_settings()

    def plan(quantization: str) -> PrecisionPlan:
        return PrecisionPlan(device="cpu", dtype=torch.bfloat16, quantization=quantization)

    assert generator_module.weight_format(settings, plan("auto")).name == "bfloat16"
    assert generator_module.weight_format(settings, plan("int8")).name == "q8"


def small_q8_model(kernels: Q8Kernels, seed: int = 0, spread: float = 0.3) -> Gemma3Model:
    config = Gemma3Config(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_layers=3,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        rms_norm_eps=1e-6,
        sliding_window=8,  # shorter than the prompts: the windowed path is exercised
        sliding_layers=(True, False, True),
        rope_theta_global=10_000.0,
        rope_theta_local=1_000.0,
        query_pre_attn_scalar=32.0,
        max_position_embeddings=128,
    )
    torch.manual_seed(seed)
    model = Gemma3Model(config)
    for parameter in model.parameters():
        parameter.data.normal_(0.0, spread)
    model.lm_head.weight = model.embed.weight  # type: ignore[union-attr]
    quantize_model(model, kernels, tied=True)
    return model.eval()


def decode_logits(
    model: Gemma3Model, prompts: torch.Tensor, slots: list[int], fused: bool
) -> torch.Tensor:
    """Prefill ``prompts`` [B, S] into ``slots``, then one decode step: logits [B, V]."""
    decoder = model.block_decoder
    b, s = prompts.shape
    cache = KVCache(model.config, slots=4, dtype=model.kv_dtype)
    rows = torch.tensor(slots)
    with torch.inference_mode():
        model(prompts, torch.arange(s).repeat(b, 1), rows, cache)
        model.block_decoder = decoder if fused else None
        try:
            return model(prompts[:, -1:], torch.full((b, 1), s), rows, cache, decoding=True)
        finally:
            model.block_decoder = decoder


HUGE_PAGES_UNAVAILABLE = q8_module._huge_pages_unavailable()


@pytest.mark.skipif(HUGE_PAGES_UNAVAILABLE is not None, reason=f"{HUGE_PAGES_UNAVAILABLE}")
def test_a_loaded_models_packed_weights_move_to_one_area_of_huge_pages_and_give_the_same_bits(
    kernels: Q8Kernels,
) -> None:
    fresh = small_q8_model(kernels)
    state = fresh.state_dict()
    with torch.device("meta"):
        loaded = Gemma3Model(fresh.config)
    empty_q8_model(loaded, kernels, tied=True)
    loaded.load_state_dict(state, assign=True, strict=True)
    held = [
        t for m in loaded.modules() if isinstance(m, Q8Linear) for t in (m.q, m.scale)
    ]  # the blocks' projections and the (tied) head
    addresses = sorted(t.data_ptr() for t in held)
    assert addresses[0] % (2 << 20) == 0  # from a 2 MB boundary, one after another
    assert addresses[-1] - addresses[0] < sum(t.nbytes + 64 for t in held)
    assert {t.data_ptr() for t in state.values()}.isdisjoint(addresses)  # copies, not the file's
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    prompts = torch.randint(0, 96, (3, 20), generator=torch.Generator().manual_seed(5))
    assert torch.equal(
        decode_logits(loaded, prompts, [0, 1, 2], fused=True),
        decode_logits(fresh, prompts, [0, 1, 2], fused=True),
    )


@pytest.mark.skipif(HUGE_PAGES_UNAVAILABLE is not None, reason=f"{HUGE_PAGES_UNAVAILABLE}")
def test_a_table_only_looked_up_stays_where_it_was_loaded(kernels: Q8Kernels) -> None:
    # int4's own int8 lookup table (and Gemma 4's per-layer inputs' table) is read a few rows a
    # step: moved, all of it would become resident for nothing
    weight = torch.randn(64, 64, generator=torch.Generator().manual_seed(9))

    class Both(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = Q8Linear.from_weight(kernels, weight)
            self.embed = Q8Embedding(Q8Linear.from_weight(kernels, weight), own=True)

    state = Both().state_dict()
    loaded = Both()
    hold_in_huge_pages_once_loaded(loaded)
    loaded.load_state_dict(state, assign=True, strict=True)
    assert loaded.proj.q.data_ptr() != state["proj.q"].data_ptr()  # moved
    assert loaded.embed.table.q.data_ptr() == state["embed.table.q"].data_ptr()  # left


def test_a_model_that_decoded_decodes_with_the_weights_loaded_after(kernels: Q8Kernels) -> None:
    # the fused blocks hold addresses of the weights and copies of the norms from their first
    # call, and each projection its int8 factor: a later load_state_dict must reach them
    model, other = small_q8_model(kernels), small_q8_model(kernels, seed=1, spread=5.0)
    assert model.lm_head.mult != other.lm_head.mult
    prompts = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(8))
    before = decode_logits(model, prompts, [0, 1], fused=True)
    model.load_state_dict(other.state_dict(), assign=True, strict=True)
    after = decode_logits(model, prompts, [0, 1], fused=True)
    assert torch.equal(after, decode_logits(other, prompts, [0, 1], fused=True))
    assert not torch.equal(after, before)


def test_a_dropped_model_that_decoded_is_freed_without_a_gc_pass(kernels: Q8Kernels) -> None:
    # unloading a model must give its weights back at once: nothing may hold the blocks in a
    # reference cycle (the fused decoder's reload hook once did)
    import gc
    import weakref

    model = small_q8_model(kernels)
    prompts = torch.randint(0, 96, (1, 8), generator=torch.Generator().manual_seed(6))
    decode_logits(model, prompts, [0], fused=True)
    blocks = weakref.ref(model.blocks)
    gc.disable()
    try:
        del model
        assert blocks() is None
    finally:
        gc.enable()


def test_the_fused_decode_step_matches_the_step_op_by_op(kernels: Q8Kernels) -> None:
    model = small_q8_model(kernels)
    assert model.block_decoder is not None
    prompts = torch.randint(0, 96, (3, 20), generator=torch.Generator().manual_seed(2))
    fused = decode_logits(model, prompts, [2, 0, 1], fused=True)
    op_by_op = decode_logits(model, prompts, [2, 0, 1], fused=False)
    assert relative_error(fused, op_by_op) < 0.02
    assert torch.equal(fused.argmax(-1), op_by_op.argmax(-1))


def test_the_fused_decode_step_gives_a_row_the_same_bits_alone_or_in_a_batch(
    each_build: Q8Kernels,
) -> None:
    model = small_q8_model(each_build)
    prompts = torch.randint(0, 96, (3, 20), generator=torch.Generator().manual_seed(3))
    batched = decode_logits(model, prompts, [0, 1, 2], fused=True)
    for i in range(3):
        alone = decode_logits(model, prompts[i : i + 1], [i], fused=True)
        assert torch.equal(alone[0], batched[i])


def test_a_capped_models_rows_are_capped_by_the_kernels_alone_or_in_a_batch(
    each_build: Q8Kernels,
) -> None:
    import dataclasses

    model = small_q8_model(each_build)
    prompts = torch.randint(0, 96, (3, 20), generator=torch.Generator().manual_seed(4))
    plain = decode_logits(model, prompts, [0, 1, 2], fused=True)
    model.config = dataclasses.replace(model.config, final_logit_softcapping=2.0)
    assert model.soft_cap_ == each_build.soft_cap_
    batched = decode_logits(model, prompts, [0, 1, 2], fused=True)
    assert_capped_as_torch_does(batched, plain, 2.0)
    for i in range(3):
        alone = decode_logits(model, prompts[i : i + 1], [i], fused=True)
        assert torch.equal(bits(alone[0]), bits(batched[i]))


@pytest.mark.parametrize("variant", ["generic", "avx2"])
def test_the_portable_and_avx2_kernels_give_the_same_bits_as_the_native_one(
    kernels: Q8Kernels, tmp_path: Path, variant: str
) -> None:
    # CPUs without AVX-512 VNNI run AVX2 (maddubs on |x| and signed weights) or plain C loops:
    # the same int32 sums and the same float work, in the same order.
    if platform.machine() != "x86_64":
        pytest.skip("x86-64 builds")
    if variant == "avx2" and "avx2" not in cpu_features():
        pytest.skip("this CPU has no AVX2")
    portable = load_kernels(tmp_path, variant=variant)
    assert portable is not None
    assert portable.vectorized == (variant == "avx2")
    gen = torch.Generator().manual_seed(4)
    # rows in eights, fours and alone; tiles in pairs and a lone one; a head-sized n (AVX-512:
    # rows packed in octet records) with a last tile of 8 outputs
    cases = [(72, 96, 5), (100, 64, 9), (40, 640, 1), (16, 32, 8), (48, 64, 17), (16392, 64, 17)]
    for n, k, m in cases:
        w, x = torch.randn(n, k, generator=gen), torch.randn(m, k, generator=gen)
        assert torch.equal(
            Q8Linear.from_weight(kernels, w)(x), Q8Linear.from_weight(portable, w)(x)
        )
    w = torch.randn(72, 96, generator=gen)
    fast = Q8Linear.from_weight(kernels, w)
    plain = Q8Linear.from_weight(portable, w)
    assert torch.equal(
        Q8Embedding(fast)(torch.tensor([0, 71])), Q8Embedding(plain)(torch.tensor([0, 71]))
    )


def test_the_avx_vnni_products_give_the_generic_bits_for_every_row_count(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # matmul_avxvnni.c as the EVEX build runs it here: one pass of 8 rows, then 1 to 7 rows
    # (both halves per pass up to 4, one half per pass from 5), odd output counts (a masked
    # last half-tile, a lone last tile)
    vnni = built_variant(tmp_path_factory, "avx2-vnni-evex")
    generic = built_variant(tmp_path_factory, "generic")
    assert vnni.variant == "avx2-vnni-evex"
    assert vnni.vectorized
    gen = torch.Generator().manual_seed(21)
    for n, k in [(37, 96), (101, 640), (9, 32)]:
        w = torch.randn(n, k, generator=gen)
        ours, reference = Q8Linear.from_weight(vnni, w), Q8Linear.from_weight(generic, w)
        for m in range(1, 10):
            x = torch.randn(m, k, generator=gen) * (1 + 10 * torch.rand(m, 1, generator=gen))
            assert torch.equal(ours(x), reference(x)), (n, k, m)
        x = torch.randn(17, k, generator=gen)  # two passes of 8 and one row
        assert torch.equal(ours(x), reference(x)), (n, k, 17)
    # the extremes of the int8 values: |sums| as large as they get, without overflow
    w = torch.full((16, 64), -1.0)
    w[::2] = 1.0
    x = torch.ones(8, 64)
    x[::2] = -1.0
    product = Q8Linear.from_weight(vnni, w)(x)
    assert torch.equal(product, Q8Linear.from_weight(generic, w)(x))
    assert float(product.abs().min()) == pytest.approx(64.0, rel=0.01)


def test_the_avx2_vnni_build_has_vex_dpbusd_and_no_avx512_instruction(tmp_path: Path) -> None:
    # Most AVX-512 machines lack AVX-VNNI (Zen 4, Ice Lake; not Sapphire Rapids or Zen 5), and
    # qemu 7.2 does not implement it:
    # what runs here is its source with EVEX dpbusd (above); this checks what the real build
    # emits: VEX dpbusd on ymm, and nothing from AVX-512 (zmm, mask registers, EVEX encoding).
    if platform.machine() != "x86_64":
        pytest.skip("x86-64 builds")
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump (binutils) is not installed")
    library = native.build_library(tmp_path, variant="avx2-vnni")
    if library is None:  # production then falls back to avx2, said once in the log
        pytest.skip("this compiler cannot build avx2-vnni (-mavxvnni: gcc >= 11, clang >= 12)")
    listing = subprocess.run(
        [objdump, "-d", str(library)], capture_output=True, text=True, check=True
    ).stdout
    instructions = [line.split("\t") for line in listing.splitlines() if line.count("\t") >= 2]
    dpbusd = [code for _, _, code in instructions if "vpdpbusd" in code]
    assert len(dpbusd) >= 16  # unrolled row counts, int8 and 4-bit
    assert all(code.startswith("{vex} vpdpbusd") and "%ymm" in code for code in dpbusd)
    assert not [code for _, _, code in instructions if "zmm" in code or "%k" in code]
    # 0x62 is EVEX's first byte in 64-bit mode (BOUND's opcode, invalid there)
    assert not [raw for _, raw, _ in instructions if raw.startswith("62 ")]


def test_the_fused_blocks_keep_keys_and_values_in_float16_and_refuse_another_cache(
    kernels: Q8Kernels,
) -> None:
    model = small_q8_model(kernels)
    assert model.kv_dtype == torch.float16  # half of float32's memory, as llama.cpp's cache
    prompt = torch.randint(0, 96, (1, 6), generator=torch.Generator().manual_seed(8))
    positions = torch.arange(6).view(1, -1)
    cache = KVCache(model.config, slots=1, dtype=model.kv_dtype)
    with torch.inference_mode():
        model(prompt, positions, torch.tensor([0]), cache)
        written = cache.read(0, 6)
        assert all(t.dtype == torch.float16 for t in written.tensors())
        assert all(t.abs().sum() > 0 for t in written.tensors())
        with pytest.raises(ValueError, match="float16 KV cache"):
            wrong = KVCache(model.config, slots=1, dtype=torch.float32)
            model(prompt, positions, torch.tensor([0]), wrong)


def test_the_portable_build_writes_the_same_float16_keys_and_values(
    kernels: Q8Kernels, tmp_path: Path
) -> None:
    # The first layer's keys and values are the same floats in both builds (int8 products,
    # norms and rotary add in the same order); their float16 bits come from the CPU's
    # conversion in one and from float_to_half in the other.
    if platform.machine() != "x86_64":
        pytest.skip("x86-64 builds")
    portable = load_kernels(tmp_path, variant="generic")
    assert portable is not None
    prompt = torch.randint(0, 96, (1, 24), generator=torch.Generator().manual_seed(10))
    caches = []
    for built in (kernels, portable):
        model = small_q8_model(built)
        cache = KVCache(model.config, slots=1, dtype=model.kv_dtype)
        with torch.inference_mode():
            model(prompt, torch.arange(24).view(1, -1), torch.tensor([0]), cache)
        caches.append(cache)
    first_layer = [cache.read(0, 24).local_k[0] for cache in caches]  # a sliding layer
    values = [cache.read(0, 24).local_v[0] for cache in caches]
    assert torch.equal(first_layer[0], first_layer[1])
    assert torch.equal(values[0], values[1])
    assert first_layer[0].abs().sum() > 0


def test_a_prompt_prefilled_whole_in_pieces_or_token_by_token_gives_the_same_bits(
    each_build: Q8Kernels,
) -> None:
    model = small_q8_model(each_build)
    prompt = torch.randint(0, 96, (1, 20), generator=torch.Generator().manual_seed(5))
    rows = torch.tensor([1])

    def run(pieces: list[tuple[int, int, bool]]) -> tuple[torch.Tensor, KVCache]:
        cache = KVCache(model.config, slots=2, dtype=model.kv_dtype)
        logits = torch.empty(0)
        with torch.inference_mode():
            for start, end, decoding in pieces:
                positions = torch.arange(start, end).view(1, -1)
                logits = model(prompt[:, start:end], positions, rows, cache, decoding=decoding)
        return logits, cache

    whole, whole_cache = run([(0, 20, False)])
    pieces, pieces_cache = run([(0, 12, False), (12, 19, False), (19, 20, True)])
    one_by_one, one_cache = run([(0, 1, False)] + [(i, i + 1, True) for i in range(1, 20)])
    assert torch.equal(whole, pieces)
    assert torch.equal(whole, one_by_one)
    held = [cache.read(1, 20).tensors() for cache in (whole_cache, pieces_cache, one_cache)]
    assert all(torch.equal(a, b) for a, b in zip(held[0], held[1], strict=True))
    assert all(torch.equal(a, c) for a, c in zip(held[0], held[2], strict=True))


def test_argmax_takes_the_first_largest_value_as_torch_does(kernels: Q8Kernels) -> None:
    logits = torch.randn(5, 1000, generator=torch.Generator().manual_seed(6))
    logits[1, 700] = logits[1, 900] = 50.0  # a tie: the first one
    logits[2, 999] = 60.0  # in the tail after the last full vector
    logits[3, :] = 1.0  # all equal
    logits[4, 3] = 70.0
    assert kernels.argmax(logits) == logits.argmax(dim=-1).tolist()
    assert kernels.argmax(logits[:, :7]) == logits[:, :7].argmax(dim=-1).tolist()


def test_argmax_of_wide_rows_takes_the_first_of_ties_in_any_block(kernels: Q8Kernels) -> None:
    # The AVX-512 body keeps four chains over successive 16-float blocks: ties in one lane of
    # blocks that different chains hold (36: chain 2, 68: chain 0, 100: chain 2), in the last
    # full round and in the tail, and rows as wide as the output head's.
    logits = torch.randn(6, 262_144 + 37, generator=torch.Generator().manual_seed(8))
    logits[0, [100, 68, 36]] = 50.0
    logits[1, [262_100, 262_090, 262_150]] = 50.0
    logits[2, 262_144 + 36] = 60.0  # in the tail
    logits[3, 16:80] = 40.0  # a block of ties across every chain
    logits[4, :] = 1.0
    logits[5, [70, 75]] = float("inf")
    expected = logits.argmax(dim=-1).tolist()
    expected[5] = -1
    assert kernels.argmax(logits) == expected
    for width in (63, 64, 65, 1000, 4099):
        rows = logits[:, :width].contiguous()
        expected = rows.argmax(dim=-1).tolist()
        expected[5] = -1 if width > 70 else expected[5]
        assert kernels.argmax(rows) == expected


@pytest.mark.parametrize("bits", [8, 4])
def test_a_heads_argmax_found_with_its_product_is_its_logits_argmax(
    each_build: Q8Kernels, bits: int
) -> None:
    # The product's threads find each row's argmax on the columns they wrote, in runs of tile
    # pairs (~1,000 to ~2,000 columns here, by the threads): outputs 100, 5,000 and 16,400 have
    # the same weights, so a row that favours them has the same largest value in three runs:
    # the first.
    kernels = each_build
    n, k = 16_384 + 48, 64
    generator = torch.Generator().manual_seed(12)
    weight = torch.randn(n, k, generator=generator) * 0.05
    weight[[100, 5_000, 16_400]] = torch.randn(k, generator=generator)
    weight[16_420] = torch.randn(k, generator=generator)  # the largest alone, in the last run
    head = (Q4Linear if bits == 4 else Q8Linear).from_weight(kernels, weight)
    head.finds_argmax = True
    x = torch.randn(9, k, generator=generator)
    x[3] = weight[100]
    x[5] = weight[16_420]
    x[7] *= 1e37  # logits beyond float32: a run's top is infinite, the row searched whole
    with torch.inference_mode():  # as in the engine's steps
        logits = head(x)
    assert kernels._head_argmax is not None
    assert kernels._head_argmax.of(logits)
    found = kernels.argmax(logits)
    assert found == kernels.argmax(logits.clone())  # the whole-row search
    expected = logits.argmax(dim=-1).tolist()
    expected[7] = -1  # an infinite top: a broken model's row, as the search reports it
    assert torch.isinf(logits[7]).any()
    assert found == expected
    assert logits[3, 100] == logits[3, 5_000] == logits[3, 16_400]
    assert found[3] == 100
    assert found[5] == 16_420
    assert found[7] == -1
    assert kernels.argmax(head(x[5:6])) == [16_420]


@pytest.mark.parametrize("inference", [False, True])
def test_a_heads_argmax_follows_later_writes_to_its_logits(
    kernels: Q8Kernels, inference: bool
) -> None:
    with torch.inference_mode(inference):  # the engine's steps run in inference mode
        heads_argmax_after_writes(kernels)


def heads_argmax_after_writes(kernels: Q8Kernels) -> None:
    weight = torch.randn(16_384, 64, generator=torch.Generator().manual_seed(13))
    head = Q8Linear.from_weight(kernels, weight)
    head.finds_argmax = True
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(14))
    logits = head(x)
    logits[1, 7] = 1e9  # a torch write: the product's argmax no longer holds
    assert kernels.argmax(logits) == [int(logits[0].argmax()), 7]
    logits = head(x)
    capped = logits.clone()
    kernels.soft_cap_(logits, 0.001)  # the kernels' own write in place: ties at the cap
    kernels.soft_cap_(capped, 0.001)
    assert kernels.argmax(logits) == kernels.argmax(capped) == capped.argmax(dim=-1).tolist()
    logits = head(x)
    assert kernels.argmax(logits[1:]) == [int(logits[1].argmax())]  # another tensor
    assert kernels.argmax(head(x).clone()) == logits.argmax(dim=-1).tolist()


def test_only_a_head_that_finds_argmax_and_a_few_rows_keep_an_argmax(kernels: Q8Kernels) -> None:
    # a wide product that is not a head (Gemma 4's gate_up: 20,480 outputs and more) pays for
    # no search, and a prefill's many rows keep none (nor the logits they would pin)
    weight = torch.randn(20_480, 64, generator=torch.Generator().manual_seed(15))
    wide = Q8Linear.from_weight(kernels, weight)
    wide(torch.randn(2, 64))
    assert kernels._head_argmax is None
    wide.finds_argmax = True
    wide(torch.randn(2, 64))
    assert kernels._head_argmax is not None
    wide(torch.randn(65, 64))
    assert kernels._head_argmax is None


def test_argmax_reports_a_row_with_a_nan_or_an_infinite_top_as_minus_one(
    kernels: Q8Kernels,
) -> None:
    from gemma_chat.infrastructure.llm.generation.sampling import finite_argmax

    logits = torch.randn(4, 1000, generator=torch.Generator().manual_seed(11))
    logits[0, 999] = float("nan")  # in the tail
    logits[1, 3] = float("nan")  # in the vector part
    logits[2, :] = float("-inf")
    logits[3, 5] = float("inf")
    assert kernels.argmax(logits) == [-1, -1, -1, -1]
    assert finite_argmax(logits) == [-1, -1, -1, -1]
    short = logits[:, :7]  # the scalar loop only
    expected = [int(short[0].argmax()), -1, -1, -1]
    assert kernels.argmax(short) == expected
    assert finite_argmax(short) == expected


def capped_logits() -> torch.Tensor:
    """Rows of logits for the final logit cap: ordinary values, past the clamp (|x| > ~237 at
    cap 30) at both ends, zeros, tiny values, infinities and a NaN; rows of 1003 (a tail)."""
    x = torch.randn(3, 1003, generator=torch.Generator().manual_seed(7)) * 40
    x[0, :8] = torch.tensor([0.0, -0.0, 1e-6, -1e-6, 300.0, -300.0, 1e30, -1e30])
    x[1, :3] = torch.tensor([float("inf"), float("-inf"), float("nan")])
    return x


def assert_capped_as_torch_does(ours: torch.Tensor, x: torch.Tensor, cap: float) -> None:
    expected = torch.tanh(x / cap) * cap
    # a few ulp of tanh, times the cap
    torch.testing.assert_close(ours, expected, rtol=2e-6, atol=4e-7 * cap, equal_nan=True)
    assert bool((ours[~ours.isnan()].abs() <= cap).all())


def test_the_soft_cap_gives_torchs_results_and_a_row_the_same_bits_alone_or_in_a_batch(
    each_build: Q8Kernels,
) -> None:
    kernels = each_build
    x = capped_logits()
    ours = x.clone()
    kernels.soft_cap_(ours, 30.0)
    assert_capped_as_torch_does(ours, x, 30.0)
    assert ours[1, 2].isnan()  # a NaN stays: argmax still reports the broken row
    for row in range(3):
        alone = x[row : row + 1].clone()
        kernels.soft_cap_(alone, 30.0)
        assert torch.equal(bits(alone[0]), bits(ours[row]))
    tail = x[0, 5:].clone()  # another start and length: the same bits per element
    kernels.soft_cap_(tail, 30.0)
    assert torch.equal(bits(tail), bits(ours[0, 5:]))
    strided = x.clone().t()  # not contiguous: torch's in-place operations instead
    kernels.soft_cap_(strided, 30.0)
    assert_capped_as_torch_does(strided, x.t(), 30.0)


def test_the_portable_soft_cap_gives_torchs_results(tmp_path: Path) -> None:
    portable = load_kernels(tmp_path, variant="generic")
    assert portable is not None
    x = capped_logits()
    ours = x.clone()
    portable.soft_cap_(ours, 30.0)
    assert_capped_as_torch_does(ours, x, 30.0)


def test_the_avx2_soft_cap_is_as_accurate_as_the_generic_one(bodies: ctypes.CDLL) -> None:
    x = capped_logits().view(-1)
    for n in (x.numel(), x.numel() - 3, 5):  # tails of every length
        results = []
        for body in (GENERIC, AVX2):
            out = x[:n].clone()
            bodies.body_soft_cap(body, out.data_ptr(), n, 30.0)
            assert_capped_as_torch_does(out, x[:n], 30.0)
            results.append(out)
        torch.testing.assert_close(results[1], results[0], rtol=2e-6, atol=1e-5, equal_nan=True)


def test_top_k_gives_each_rows_largest_values_in_order_as_torch_does(
    kernels: Q8Kernels, tmp_path: Path
) -> None:
    logits = torch.randn(4, 5000, generator=torch.Generator().manual_seed(7))
    logits[1, 4999] = 40.0  # in the tail after the last full vector
    logits[2, 10:20] = 30.0  # ties: the lower index first
    logits[3, :] = -float("inf")
    logits[3, 17] = 1.0
    portable = load_kernels(tmp_path, variant="generic")
    assert portable is not None
    for k in (1, 5, 64):
        values, ids = kernels.top_k(logits, k)
        expected = torch.topk(logits, k)
        assert torch.equal(values, expected.values)
        assert torch.equal(logits.gather(1, ids), values)  # each id is where its value is
        assert ids[1, 0] == 4999
        assert ids[3, 0] == 17
        assert ids[2, : min(k, 10)].tolist() == list(range(10, 10 + min(k, 10)))
        plain_values, plain_ids = portable.top_k(logits, k)
        assert torch.equal(plain_values, values)
        assert torch.equal(plain_ids, ids)
    values, ids = kernels.top_k(logits, 5000)  # k = N: the whole row, sorted
    assert torch.equal(values[0], torch.sort(logits[0], descending=True).values)
    with pytest.raises(ValueError, match="top_k"):
        kernels.top_k(logits, 5001)


def test_a_forked_child_runs_the_kernels_with_its_own_threads(kernels: Q8Kernels) -> None:
    layer = Q8Linear.from_weight(kernels, torch.randn(4096, 640))
    x = torch.randn(8, 640)
    expected = layer(x)  # the parent's thread pool is running now
    with warnings.catch_warnings():  # Python 3.12+ warns about forking a threaded process
        warnings.simplefilter("ignore", DeprecationWarning)
        child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through its exit code
        os._exit(0 if torch.equal(layer(x), expected) else 1)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done, status = os.waitpid(child, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    pytest.fail("the forked child hung in the kernels")


@pytest.mark.parametrize("threads", [2, 4, 8])
def test_every_item_of_every_parallel_loop_runs_once_whoever_wakes_late(
    tmp_path: Path, threads: int
) -> None:
    # The caller waits only for the workers that joined a loop: a worker waking after its loop
    # ended must take nothing of the next one while the caller sets it up.
    compiler = shutil.which("cc") or shutil.which("gcc")
    assert compiler is not None
    program = tmp_path / "pool_stress"
    sources = [str(Path(__file__).parent / "pool_stress.c"), str(KERNELS / "thread_pool.c")]
    flags = ["-O2", "-pthread", f"-I{KERNELS}"]
    subprocess.run([compiler, *flags, *sources, "-o", str(program), "-lm"], check=True)
    done = subprocess.run(
        [str(program), str(threads), "30000"], capture_output=True, text=True, timeout=600
    )
    assert (done.returncode, done.stdout.strip()) == (0, "ok")


# ---- The AVX2 bodies against the generic ones, operation by operation ----------------------


@pytest.fixture(scope="module")
def bodies(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    """An AVX2 build of the kernels with kernel_bodies.c: both bodies of each operation."""
    if not cpu_has("avx2", "fma", "f16c"):
        pytest.skip("this CPU cannot run an AVX2 build")
    compiler = shutil.which("cc") or shutil.which("gcc")
    assert compiler is not None
    target = tmp_path_factory.mktemp("bodies") / "bodies.so"
    sources = [*sorted(KERNELS.glob("*.c")), Path(__file__).parent / "kernel_bodies.c"]
    subprocess.run(
        [compiler, "-march=haswell", "-O3", "-pthread", "-shared", "-fPIC", f"-I{KERNELS}"]
        + [str(s) for s in sources]
        + ["-o", str(target), "-lm"],
        check=True,
    )
    lib = ctypes.CDLL(str(target))
    p, i64, f32, which = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
    for name, args, result in [
        ("body_quantize_block", [which, p, p, p], None),
        ("body_dots16", [which, p, p, i64, p, p], None),
        ("body_max_f32", [which, p, i64], f32),
        ("body_exp_shifted", [which, p, i64, f32], f32),
        ("body_weighted_sums", [which, p, i64, i64, p, i64, p], None),
        ("body_gelu_tanh_mul", [which, p, p, p, i64], None),
        ("body_soft_cap", [which, p, i64, f32], None),
        ("body_argmax_row", [which, p, i64], i64),
        ("body_top_k_heap", [which, p, i64, i64, p, p], None),
    ]:
        getattr(lib, name).argtypes = args
        getattr(lib, name).restype = result
    return lib


GENERIC, AVX2 = 0, 1


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def test_the_avx2_quantization_gives_the_generic_bits(bodies: ctypes.CDLL) -> None:
    gen = torch.Generator().manual_seed(20)
    blocks = [torch.randn(32, generator=gen) * scale for scale in (1.0, 1e-3, 1e3, 1e-30)]
    blocks.append(torch.zeros(32))
    halves = torch.zeros(32)
    halves[:8] = torch.tensor([127.0, 63.5, 62.5, -0.5, 0.5, 1.5, -2.5, -0.0])  # ties to even
    blocks.append(halves)
    tiny = torch.zeros(32)  # a subnormal scale: products past 127 (wrapped, as the cast does)
    tiny[0], tiny[1] = 127.5 * 2.0**-149, 3 * 2.0**-149
    blocks.append(tiny)
    for special in (float("nan"), float("inf"), float("-inf")):
        block = torch.randn(32, generator=gen)
        block[5] = special
        blocks.append(block)
    for block in blocks:
        x = block.contiguous()
        out = []
        for body in (GENERIC, AVX2):
            q, s = torch.zeros(32, dtype=torch.int8), torch.zeros(1)
            bodies.body_quantize_block(body, x.data_ptr(), q.data_ptr(), s.data_ptr())
            out.append((q, s))
        assert torch.equal(out[0][0], out[1][0]), block
        assert torch.equal(bits(out[0][1]), bits(out[1][1]))


@pytest.mark.parametrize("D", [256, 32, 48, 40])
def test_the_avx2_scores_give_the_generic_bits(bodies: ctypes.CDLL, D: int) -> None:
    gen = torch.Generator().manual_seed(D)
    q = torch.randn(D, generator=gen)
    keys = (torch.randn(16, D, generator=gen) * 3).half()
    keys[3, :4] = torch.tensor([6e-8, -6e-5, 65504.0, 0.0]).half()  # subnormal, largest
    results = []
    for body in (GENERIC, AVX2):
        out, room = torch.zeros(16), torch.zeros(D)
        bodies.body_dots16(body, q.data_ptr(), keys.data_ptr(), D, out.data_ptr(), room.data_ptr())
        results.append(out)
    assert torch.equal(bits(results[0]), bits(results[1]))
    assert torch.allclose(results[1], keys.float() @ q, rtol=1e-4, atol=1e-3)


def test_the_avx2_maximum_gives_the_generic_value(bodies: ctypes.CDLL) -> None:
    gen = torch.Generator().manual_seed(21)
    for n in (1, 5, 8, 9, 16, 23, 1000):
        v = torch.randn(n, generator=gen)
        cases = [v, v.clone().fill_(float("-inf"))]
        with_nan = v.clone()
        with_nan[n // 2] = float("nan")
        cases.append(with_nan)
        for case in cases:
            tops = [bodies.body_max_f32(body, case.data_ptr(), n) for body in (GENERIC, AVX2)]
            assert tops[0] == tops[1]
            assert tops[1] == float(case.nan_to_num(nan=float("-inf"), neginf=float("-inf")).max())


@pytest.mark.parametrize("D", [256, 40])
def test_the_avx2_weighted_sums_give_the_generic_bits(bodies: ctypes.CDLL, D: int) -> None:
    gen = torch.Generator().manual_seed(22 + D)
    for T in (1, 7, 33, 300):
        values = torch.randn(T, D, generator=gen).half()
        for nq in range(1, 17):
            w = torch.softmax(torch.randn(nq, T, generator=gen) * 4, dim=-1).contiguous()
            results = []
            for body in (GENERIC, AVX2):
                out = torch.zeros(nq, D)
                bodies.body_weighted_sums(
                    body, w.data_ptr(), T, nq, values.data_ptr(), D, out.data_ptr()
                )
                results.append(out)
            assert torch.equal(bits(results[0]), bits(results[1])), (T, nq)
            assert torch.allclose(results[1], w @ values.float(), rtol=1e-4, atol=1e-5)


def test_the_avx2_argmax_gives_the_generic_index(bodies: ctypes.CDLL) -> None:
    gen = torch.Generator().manual_seed(23)
    rows = []
    for n in (1, 7, 8, 9, 17, 1000, 1003):
        rows.append(torch.randn(n, generator=gen))
        rows.append(torch.ones(n))  # all equal: the first
        rows.append(torch.full((n,), float("-inf")))
        for at in {0, n // 2, n - 1}:
            for special in (float("nan"), float("inf"), float("-inf"), 50.0):
                row = torch.randn(n, generator=gen)
                row[at] = special
                rows.append(row)
    tie = torch.randn(1000, generator=gen)
    tie[[300, 301, 700, 998]] = 9.0  # ties in different lanes and in the tail: the first
    rows.append(tie)
    for row in rows:
        found = [bodies.body_argmax_row(body, row.data_ptr(), len(row)) for body in (GENERIC, AVX2)]
        assert found[0] == found[1], row
    assert bodies.body_argmax_row(AVX2, tie.data_ptr(), 1000) == 300


def test_the_avx2_top_k_scan_builds_the_generic_heap(bodies: ctypes.CDLL) -> None:
    gen = torch.Generator().manual_seed(24)
    rows = [
        torch.randn(5000, generator=gen),
        torch.randint(0, 20, (5003,), generator=gen).float(),  # many ties
        torch.randn(37, generator=gen),
    ]
    with_nan = torch.randn(2000, generator=gen)
    with_nan[[0, 900]] = float("nan")  # one among the first k, one later
    rows.append(with_nan)
    for row in rows:
        for k in (1, 5, 30):
            heaps = []
            for body in (GENERIC, AVX2):
                v, ids = torch.zeros(k), torch.zeros(k, dtype=torch.int64)
                bodies.body_top_k_heap(
                    body, row.data_ptr(), len(row), k, v.data_ptr(), ids.data_ptr()
                )
                heaps.append((v, ids))
            assert torch.equal(bits(heaps[0][0]), bits(heaps[1][0]))
            assert torch.equal(heaps[0][1], heaps[1][1])


def exp_shifted(bodies: ctypes.CDLL, body: int, v: torch.Tensor, shift: float) -> torch.Tensor:
    out = v.clone()
    total = bodies.body_exp_shifted(body, out.data_ptr(), len(out), shift)
    assert total == pytest.approx(float(out.double().sum()), rel=1e-5)
    return out


def test_the_avx2_softmax_exponentials_are_within_a_few_ulp_of_expf(bodies: ctypes.CDLL) -> None:
    # A vectorised exp (ggml's) rounds differently from expf; each value is still computed the
    # same way wherever it sits in the row (vector or tail): a row's softmax has one value.
    gen = torch.Generator().manual_seed(25)
    for n in (1, 5, 8, 13, 300, 1379):
        v = torch.randn(n, generator=gen) * 10
        v[0] = -150.0  # past float's range: zero (or a subnormal) in both
        shift = float(v.max())
        plain, vector = exp_shifted(bodies, GENERIC, v, shift), exp_shifted(bodies, AVX2, v, shift)
        assert torch.allclose(vector, plain, rtol=3e-7, atol=1e-40)
        if n >= 13:
            head = exp_shifted(bodies, AVX2, v[: n - 3].clone(), shift)
            assert torch.equal(bits(head), bits(vector[: n - 3]))


def test_the_avx2_gelu_is_as_accurate_as_the_generic_one(bodies: ctypes.CDLL) -> None:
    # The exponential's argument carries a few ulp of x^3's rounding, which exp scales by the
    # argument (up to ~50): both bodies are ~1e-5 from the exact value at worst.
    gen = torch.Generator().manual_seed(26)
    n = 20_003
    gate = torch.randn(n, generator=gen) * 3
    gate[:8] = torch.tensor([0.0, -0.0, 20.0, -20.0, 100.0, -100.0, 1e-20, -1e-20])
    up = torch.randn(n, generator=gen)
    x = gate.double()
    exact = x / (1 + torch.exp(-2 * 0.7978845608028654 * (x + 0.044715 * x**3))) * up.double()
    results, errors = [], []
    for body in (GENERIC, AVX2):
        out = torch.zeros(n)
        bodies.body_gelu_tanh_mul(body, gate.data_ptr(), up.data_ptr(), out.data_ptr(), n)
        results.append(out)
        errors.append((out.double() - exact).abs() / exact.abs().clamp_min(1e-30))
    assert float(errors[1].max()) <= max(1.5 * float(errors[0].max()), 1e-6)
    assert float(errors[1].mean()) <= 1.5 * float(errors[0].mean())
    assert torch.equal(bits(results[0][:2]), bits(results[1][:2]))  # the signs of zero
    head = torch.zeros(n - 3)  # the tail's values as the vector loop's
    bodies.body_gelu_tanh_mul(AVX2, gate.data_ptr(), up.data_ptr(), head.data_ptr(), n - 3)
    assert torch.equal(bits(head), bits(results[1][: n - 3]))


def test_the_avx2_build_decodes_as_the_portable_one(
    kernels: Q8Kernels, each_build: Q8Kernels, tmp_path: Path
) -> None:
    # The exponentials and dot products round differently: close logits, the same greedy token.
    if platform.machine() != "x86_64":
        pytest.skip("x86-64 builds")
    portable = load_kernels(tmp_path, variant="generic")
    assert portable is not None
    prompts = torch.randint(0, 96, (3, 20), generator=torch.Generator().manual_seed(27))
    plain = decode_logits(small_q8_model(portable), prompts, [0, 1, 2], fused=True)
    vector = decode_logits(small_q8_model(each_build), prompts, [0, 1, 2], fused=True)
    assert relative_error(vector, plain) < 1e-4
    assert torch.equal(vector.argmax(-1), plain.argmax(-1))


def test_a_ring_past_the_window_gives_the_bits_of_a_cache_that_keeps_every_position(
    each_build: Q8Kernels,
) -> None:
    # The sliding layers' window is 8: a ring of 16 positions (chunk 8) wraps many times over
    # 60 prompt tokens and 40 greedy ones; a chunk of 4096 keeps every position in place.
    model = small_q8_model(each_build)
    prompt = torch.randint(0, 96, (1, 60), generator=torch.Generator().manual_seed(11))
    rows = torch.tensor([1])

    def run(chunk: int) -> tuple[list[int], torch.Tensor]:
        cache = KVCache(model.config, slots=2, dtype=model.kv_dtype, chunk=chunk)
        tokens: list[int] = []
        with torch.inference_mode():
            logits = model(prompt, torch.arange(60).view(1, -1), rows, cache)
            for step in range(40):
                tokens.append(int(logits[0].argmax()))
                at = torch.tensor([[60 + step]])
                logits = model(torch.tensor([tokens[-1:]]), at, rows, cache, decoding=True)
        assert cache.local_capacity(1) == (16 if chunk == 8 else 112)  # ring, or every position
        return tokens, logits

    ring_tokens, ring_logits = run(8)
    full_tokens, full_logits = run(4096)
    assert ring_tokens == full_tokens
    assert torch.equal(ring_logits, full_logits)


def test_rows_of_a_long_prompt_go_in_passes_that_give_the_bits_of_one_pass(
    each_build: Q8Kernels,
) -> None:
    # One sequence decoding beside another's 50-token prompt: with a chunk of 8 the prompt
    # goes in 7 passes (the ring wraps between them), with 4096 in one.
    model = small_q8_model(each_build)
    gen = torch.Generator().manual_seed(12)
    first, second = torch.randint(0, 96, (30,), generator=gen), torch.randint(
        0, 96, (50,), generator=gen
    )

    def run(chunk: int) -> torch.Tensor:
        cache = KVCache(model.config, slots=2, dtype=model.kv_dtype, chunk=chunk)
        with torch.inference_mode():
            model.forward_rows(
                first, torch.arange(30), torch.zeros(30, dtype=torch.long), cache, [29]
            )
            ids = torch.cat([first[-1:], second])
            positions = torch.cat([torch.tensor([30]), torch.arange(50)])
            slots = torch.tensor([0] + [1] * 50)
            return model.forward_rows(ids, positions, slots, cache, [0, 50])

    assert torch.equal(run(8), run(4096))
