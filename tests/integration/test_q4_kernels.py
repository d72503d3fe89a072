"""The 4-bit weight path: its kernels against the dequantized weights, each instruction set's
body against the generic one, batch invariance, and (slow) the embedded model with int4."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch

from gemma_chat.infrastructure.llm.engine.gptq import gptq_weight4
from gemma_chat.infrastructure.llm.engine.kv_cache import KVCache
from gemma_chat.infrastructure.llm.engine.model import Gemma3Model
from gemma_chat.infrastructure.llm.engine.native import cpu_features
from gemma_chat.infrastructure.llm.engine.q8 import (
    BLOCK,
    BlockBits,
    Q4Linear,
    Q8Embedding,
    Q8Kernels,
    Q8Linear,
    empty_q8_model,
    load_kernels,
    pack_weight4,
    quantize_model,
    quantize_weight4,
)

from .test_q8_kernels import built_variant, decode_logits, relative_error, small_q8_model


def dequantized(kernels: Q8Kernels, w: torch.Tensor) -> torch.Tensor:
    q, scale = quantize_weight4(kernels, w)
    n, k = w.shape
    return (q.float().view(n, k // BLOCK, BLOCK) * scale.unsqueeze(-1)).view(n, k)


def test_the_values_are_4_bit_and_a_zero_block_stays_zero(kernels: Q8Kernels) -> None:
    w = torch.randn(40, 96)
    w[3, :32] = 0.0
    q, scale = quantize_weight4(kernels, w)
    assert q.dtype == torch.int8
    assert int(q.min()) >= -8
    assert int(q.max()) <= 7
    assert int(q.min()) == -8 or int(q.max()) == 7  # the range is used
    assert float(scale[3, 0]) == 0.0
    assert not q[3, :32].any()
    # each block's scale is the least-squares one for its values: no other scale does better
    # (also with importance: the error weighed by it)
    restored = dequantized(kernels, w)
    for factor in (0.98, 1.02):
        worse = (q.float().view(40, 3, 32) * (scale * factor).unsqueeze(-1)).view(40, 96)
        assert float((worse - w).norm()) > float((restored - w).norm())
    importance = torch.rand(96) * 10
    q, scale = quantize_weight4(kernels, w, importance)
    restored = (q.float().view(40, 3, 32) * scale.unsqueeze(-1)).view(40, 96)
    for factor in (0.98, 1.02):
        worse = (q.float().view(40, 3, 32) * (scale * factor).unsqueeze(-1)).view(40, 96)
        assert float(((worse - w) ** 2 * importance).sum()) > float(
            ((restored - w) ** 2 * importance).sum()
        )


def test_importance_makes_the_heavy_columns_more_exact(kernels: Q8Kernels) -> None:
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(64, 64, generator=gen)
    importance = torch.ones(64)
    importance[::8] = 100.0  # a few features much larger than the others
    plain, weighed = (
        (q.float().view(64, 2, 32) * s.unsqueeze(-1)).view(64, 64)
        for q, s in (quantize_weight4(kernels, w), quantize_weight4(kernels, w, importance))
    )
    heavy = slice(None, None, 8)
    assert float((weighed - w)[:, heavy].norm()) < float((plain - w)[:, heavy].norm())


def test_the_packed_nibbles_are_the_values_plus_8_in_the_documented_order() -> None:
    q = torch.randint(-8, 8, (16, 32), dtype=torch.int8)
    packed, halves, factor = pack_weight4(q, torch.ones(16, 1))
    assert packed.shape == (1, 1, 4, 16, 4)
    # byte (g, lane, j): k = 4g + j in the low nibble, 16 + 4g + j in the high one
    for g in range(4):
        for lane in (0, 7, 15):
            for j in range(4):
                byte = int(packed[0, 0, g, lane, j])
                assert byte & 0x0F == int(q[lane, 4 * g + j]) + 8
                assert byte >> 4 == int(q[lane, 16 + 4 * g + j]) + 8
    assert torch.equal(halves.float() * factor, torch.ones(1, 1, 16))


@pytest.mark.parametrize(("n", "k"), [(96, 64), (640, 2048), (1536, 640), (33, 640)])
def test_the_product_is_the_dequantized_product(kernels: Q8Kernels, n: int, k: int) -> None:
    gen = torch.Generator().manual_seed(n)
    w, x = torch.randn(n, k, generator=gen), torch.randn(5, k, generator=gen)
    layer = Q4Linear.from_weight(kernels, w)
    assert layer.bits == 4
    assert layer.out_features == n
    assert layer.in_features == k
    # only the activations' int8 rounding stands between the two
    assert relative_error(layer(x), x @ dequantized(kernels, w).T) < 0.015


def test_the_embedding_reads_the_dequantized_rows(kernels: Q8Kernels) -> None:
    w = torch.randn(50, 64)
    rows = Q8Embedding(Q4Linear.from_weight(kernels, w))(torch.tensor([[3, 7, 49]]))
    # the scales are stored in float16: within its rounding
    assert torch.allclose(rows[0], dequantized(kernels, w)[[3, 7, 49]], rtol=2e-3, atol=1e-6)


def test_a_row_gets_the_same_bits_alone_or_in_a_batch(kernels: Q8Kernels) -> None:
    gen = torch.Generator().manual_seed(1)
    layer = Q4Linear.from_weight(kernels, torch.randn(300, 640, generator=gen))
    x = torch.randn(19, 640, generator=gen)  # 8-row tiles, 4-row tiles and a tail
    batched = layer(x)
    for i in range(19):
        assert torch.equal(layer(x[i : i + 1])[0], batched[i])


@pytest.mark.parametrize("variant", ["generic", "avx2"])
def test_every_x86_body_gives_the_bits_of_the_one_this_cpu_runs(
    kernels: Q8Kernels, tmp_path: Path, variant: str
) -> None:
    # VNNI (dpbusd on the nibbles), AVX2 (maddubs, 16-bit sums) and the plain loops: the same
    # int32 sums and the same float work in the same order
    if platform.machine() != "x86_64":
        pytest.skip("x86-64 builds")
    if variant == "avx2" and "avx2" not in cpu_features():
        pytest.skip("this CPU has no AVX2")
    other = load_kernels(tmp_path, variant=variant)
    assert other is not None
    gen = torch.Generator().manual_seed(4)
    # a head-sized n (AVX-512: rows packed in octet records) with a last tile of 8 outputs
    cases = [(72, 96, 5), (100, 64, 9), (40, 640, 1), (16, 32, 8), (48, 64, 17), (16392, 64, 17)]
    for n, k, m in cases:
        w, x = torch.randn(n, k, generator=gen), torch.randn(m, k, generator=gen)
        packed = pack_weight4(*quantize_weight4(kernels, w))
        ours, theirs = Q4Linear(kernels, packed, n), Q4Linear(other, packed, n)
        assert torch.equal(ours(x), theirs(x)), (n, k, m)
        ids = torch.tensor([0, n - 1, n // 2])
        assert torch.equal(kernels.rows(ours, ids), other.rows(theirs, ids))


def small_q4_model(kernels: Q8Kernels) -> Gemma3Model:
    from gemma_chat.infrastructure.llm.engine import q8

    model = small_q8_model(kernels)  # the same random model, quantized again to 4 bits
    for block in model.blocks:
        for name in ("qkv", "o", "gate_up", "down"):
            linear = getattr(block, name)
            assert isinstance(linear, Q8Linear)
            setattr(block, name, Q4Linear.from_weight(kernels, dequantize_q8(kernels, linear)))
    head = model.lm_head
    assert isinstance(head, Q8Linear)
    q8._install(
        model, kernels, Q4Linear.from_weight(kernels, dequantize_q8(kernels, head)), tied=True
    )
    return model


def dequantize_q8(kernels: Q8Kernels, linear: Q8Linear) -> torch.Tensor:
    return kernels.rows(linear, torch.arange(linear.out_features))


def test_the_fused_decode_step_on_4_bit_weights_gives_a_row_the_same_bits_alone_or_batched(
    kernels: Q8Kernels,
) -> None:
    model = small_q4_model(kernels)
    assert all(b.qkv.bits == 4 for b in model.blocks)
    prompts = torch.randint(0, 96, (3, 20), generator=torch.Generator().manual_seed(3))
    batched = decode_logits(model, prompts, [0, 1, 2], fused=True)
    for i in range(3):
        alone = decode_logits(model, prompts[i : i + 1], [i], fused=True)
        assert torch.equal(alone[0], batched[i])
    # and the fused blocks compute what the layers do one by one
    op_by_op = decode_logits(model, prompts, [0, 1, 2], fused=False)
    assert relative_error(batched, op_by_op) < 0.02


def test_a_4_bit_model_prefilled_whole_or_token_by_token_gives_the_same_bits(
    kernels: Q8Kernels,
) -> None:
    model = small_q4_model(kernels)
    prompt = torch.randint(0, 96, (1, 12), generator=torch.Generator().manual_seed(5))
    whole_cache = KVCache(model.config, slots=1, dtype=model.kv_dtype)
    steps_cache = KVCache(model.config, slots=1, dtype=model.kv_dtype)
    slot = torch.tensor([0])
    with torch.inference_mode():
        whole = model(prompt, torch.arange(12).view(1, -1), slot, whole_cache, last_only=False)
        for t in range(12):
            step = model(prompt[:, t : t + 1], torch.tensor([[t]]), slot, steps_cache)
            assert torch.equal(step[0], whole[0, t])


def correlated_inputs(rows: int, k: int, seed: int) -> torch.Tensor:
    """Inputs whose features are correlated and of unequal size, as a norm's outputs are."""
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(k, k, generator=torch.Generator().manual_seed(99)) / k**0.5
    mixing += torch.diag(torch.rand(k, generator=torch.Generator().manual_seed(98)) * 3)
    return torch.randn(rows, k, generator=gen) @ mixing


def test_gptq_rounding_lowers_the_products_error_against_plain_rounding(
    kernels: Q8Kernels,
) -> None:
    k = 128
    w = torch.randn(96, k, generator=torch.Generator().manual_seed(4))
    x = correlated_inputs(4000, k, seed=1)
    covariance = x.double().T @ x.double() / x.shape[0]
    importance = (x * x).mean(dim=0)
    plain = quantize_weight4(kernels, w, importance)
    fitted = gptq_weight4(kernels, w, covariance, importance)
    q, scale = fitted
    assert q.dtype == torch.int8
    assert q.shape == (96, k)
    assert scale.shape == (96, k // BLOCK)
    assert int(q.min()) >= -8
    assert int(q.max()) <= 7

    def output_error(values: tuple[torch.Tensor, torch.Tensor], inputs: torch.Tensor) -> float:
        q, s = values
        restored = (q.float().view(96, -1, BLOCK) * s.unsqueeze(-1)).view(96, k)
        return float(((inputs @ (restored - w).T) ** 2).mean())

    # on the calibration inputs and on fresh ones from the same distribution
    for inputs in (x, correlated_inputs(4000, k, seed=2)):
        assert output_error(fitted, inputs) < 0.8 * output_error(plain, inputs)
    # the weight itself is further off: what the int8 lookup table is for (BlockBits.lookup)
    assert output_error(fitted, torch.eye(k)) > output_error(plain, torch.eye(k))


def test_a_model_with_a_gptq_head_and_its_own_lookup_table_loads_back_the_same(
    kernels: Q8Kernels,
) -> None:
    config = small_q8_model(kernels).config
    torch.manual_seed(0)
    fresh = Gemma3Model(config)  # a float model, as small_q8_model's before quantizing
    for parameter in fresh.parameters():
        parameter.data.normal_(0.0, 0.3)
    fresh.lm_head.weight = fresh.embed.weight  # type: ignore[union-attr]
    bits = BlockBits(head=4, blocks=8, lookup=8)
    x = correlated_inputs(500, 64, seed=3)
    values = gptq_weight4(kernels, fresh.embed.weight, x.double().T @ x.double() / 500)
    quantize_model(fresh, kernels, tied=True, bits=bits, head_values=values)
    assert isinstance(fresh.lm_head, Q4Linear)
    assert isinstance(fresh.embed_lookup, Q8Embedding)
    table = fresh.embed_lookup.table
    assert isinstance(table, Q8Linear)
    assert table.bits == 8
    state = fresh.state_dict()
    assert "embed_lookup.table.q" in state
    with torch.device("meta"):
        loaded = Gemma3Model(config)
    empty_q8_model(loaded, kernels, tied=True, bits=bits)
    loaded.load_state_dict(state, assign=True, strict=True)
    prompt = torch.randint(0, 96, (1, 10), generator=torch.Generator().manual_seed(6))
    outputs = []
    for m in (fresh, loaded):
        cache = KVCache(m.config, slots=1, dtype=m.kv_dtype)
        with torch.inference_mode():
            outputs.append(m(prompt, torch.arange(10).view(1, -1), torch.tensor([0]), cache))
    assert torch.equal(outputs[0], outputs[1])
    # the lookup reads the int8 table, not the 4-bit head
    ids = torch.tensor([[5, 7]])
    assert torch.equal(fresh.embed_lookup(ids)[0], kernels.rows(table, ids[0]))


def test_the_int4_entry_has_a_key_of_its_own_rounding(kernels: Q8Kernels, tmp_path: Path) -> None:
    from gemma_chat.infrastructure.llm.engine.converted_store import (
        FORMAT_VERSION,
        Q4_FORMAT_VERSION,
        ConvertedModelStore,
        WeightFormat,
    )

    store, digest = ConvertedModelStore(tmp_path), "ab" * 32
    four = store.key(digest, WeightFormat.q4(kernels))
    # main's importance-weighted entries were "-q4-v3": never read as this rounding's
    assert four.endswith(f"-q4-v{FORMAT_VERSION}.{Q4_FORMAT_VERSION}")
    assert Q4_FORMAT_VERSION >= 4  # 4: Gemma 4's entries rounded by GPTQ (3: per weight)
    assert store.key(digest, WeightFormat.q8(kernels)).endswith(f"-q8-v{FORMAT_VERSION}")
    assert WeightFormat.q4(kernels).bits == BlockBits(head=4, blocks=8, lookup=8)


def test_the_avx_vnni_4_bit_products_give_the_generic_bits_for_every_row_count(
    kernels: Q8Kernels, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # matmul4_avxvnni.c as the EVEX build runs it here (see test_q8_kernels.py)
    vnni = built_variant(tmp_path_factory, "avx2-vnni-evex")
    generic = built_variant(tmp_path_factory, "generic")
    gen = torch.Generator().manual_seed(22)
    for n, k in [(37, 96), (101, 640), (9, 32)]:
        w = torch.randn(n, k, generator=gen)
        packed = pack_weight4(*quantize_weight4(kernels, w))
        ours, reference = Q4Linear(vnni, packed, n), Q4Linear(generic, packed, n)
        for m in [*range(1, 10), 17]:
            x = torch.randn(m, k, generator=gen) * (1 + 10 * torch.rand(m, 1, generator=gen))
            assert torch.equal(ours(x), reference(x)), (n, k, m)
        ids = torch.tensor([0, n - 1, n // 2])
        assert torch.equal(vnni.rows(ours, ids), generic.rows(reference, ids))
