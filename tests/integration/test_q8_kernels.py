"""The int8 kernels: accuracy, batch invariance, the cached build and its fallback."""

from __future__ import annotations

import logging
import os
import platform
import signal
import time
import warnings
from pathlib import Path

import pytest
import torch

from gemma_chat.infrastructure.llm.engine.config import Gemma3Config
from gemma_chat.infrastructure.llm.engine.kv_cache import KVCache
from gemma_chat.infrastructure.llm.engine.model import Gemma3Model
from gemma_chat.infrastructure.llm.engine.native import cpu_features
from gemma_chat.infrastructure.llm.engine.q8 import (
    Q8Embedding,
    Q8Kernels,
    Q8Linear,
    load_kernels,
    quantize_model,
    quantize_weight,
)


@pytest.fixture(scope="module")
def kernels(tmp_path_factory: pytest.TempPathFactory) -> Q8Kernels:
    built = load_kernels(tmp_path_factory.mktemp("kernels"))
    assert built is not None, "a C compiler is part of the supported set-up"
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


def small_q8_model(kernels: Q8Kernels) -> Gemma3Model:
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
    torch.manual_seed(0)
    model = Gemma3Model(config)
    for parameter in model.parameters():
        parameter.data.normal_(0.0, 0.3)
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


def test_the_fused_decode_step_matches_the_step_op_by_op(kernels: Q8Kernels) -> None:
    model = small_q8_model(kernels)
    assert model.block_decoder is not None
    prompts = torch.randint(0, 96, (3, 20), generator=torch.Generator().manual_seed(2))
    fused = decode_logits(model, prompts, [2, 0, 1], fused=True)
    op_by_op = decode_logits(model, prompts, [2, 0, 1], fused=False)
    assert relative_error(fused, op_by_op) < 0.02
    assert torch.equal(fused.argmax(-1), op_by_op.argmax(-1))


def test_the_fused_decode_step_gives_a_row_the_same_bits_alone_or_in_a_batch(
    kernels: Q8Kernels,
) -> None:
    model = small_q8_model(kernels)
    prompts = torch.randint(0, 96, (3, 20), generator=torch.Generator().manual_seed(3))
    batched = decode_logits(model, prompts, [0, 1, 2], fused=True)
    for i in range(3):
        alone = decode_logits(model, prompts[i : i + 1], [i], fused=True)
        assert torch.equal(alone[0], batched[i])


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
    for n, k, m in [(72, 96, 5), (100, 64, 9), (40, 640, 1), (16, 32, 8)]:
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
        assert cache.k[:, 0, :, :6].abs().sum() > 0  # written, as float16
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
    assert torch.equal(caches[0].k[0], caches[1].k[0])
    assert torch.equal(caches[0].v[0], caches[1].v[0])
    assert caches[0].k[0, 0, :, :24].abs().sum() > 0


def test_a_prompt_prefilled_whole_in_pieces_or_token_by_token_gives_the_same_bits(
    kernels: Q8Kernels,
) -> None:
    model = small_q8_model(kernels)
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
    assert torch.equal(whole_cache.k, pieces_cache.k)
    assert torch.equal(whole_cache.v, one_cache.v)


def test_argmax_takes_the_first_largest_value_as_torch_does(kernels: Q8Kernels) -> None:
    logits = torch.randn(5, 1000, generator=torch.Generator().manual_seed(6))
    logits[1, 700] = logits[1, 900] = 50.0  # a tie: the first one
    logits[2, 999] = 60.0  # in the tail after the last full vector
    logits[3, :] = 1.0  # all equal
    logits[4, 3] = 70.0
    assert kernels.argmax(logits) == logits.argmax(dim=-1).tolist()
    assert kernels.argmax(logits[:, :7]) == logits[:, :7].argmax(dim=-1).tolist()


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
