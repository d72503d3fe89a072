"""The memory estimate (computed from the config before anything loads) is the bytes the engine
then holds: the converted weights of every format, tied and untied, and a sequence's keys and
values in the ``KVCache`` at any length (sliding-window layers keep a ring)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from gemma_chat import get_settings
from gemma_chat.domain.errors import ModelTooLargeError
from gemma_chat.infrastructure.llm.engine.architecture import complete_text_config
from gemma_chat.infrastructure.llm.engine.checkpoint import SafetensorsCheckpoint
from gemma_chat.infrastructure.llm.engine.config import (
    Gemma3Config,
    Gemma4Config,
    text_config_from_hf,
)
from gemma_chat.infrastructure.llm.engine.conversion import convert_weights
from gemma_chat.infrastructure.llm.engine.converted_store import WeightFormat
from gemma_chat.infrastructure.llm.engine.generator import _weights_bytes, check_memory
from gemma_chat.infrastructure.llm.engine.kv_cache import KVCache
from gemma_chat.infrastructure.llm.engine.memory import estimate_memory
from gemma_chat.infrastructure.llm.engine.q8 import (
    BlockBits,
    Q8Kernels,
    load_kernels,
    quantize_model,
)
from gemma_chat.infrastructure.llm.engine.weights import lean_weight_sources, load_hf_state_dict
from gemma_chat.infrastructure.llm.loading.model_source import ModelSource

from .gemma_variants import build_text_model

CALIBRATION_IDS = list(range(3, 300))
FORMATS = {
    "float32": (torch.float32, None),
    "bfloat16": (torch.bfloat16, None),
    "int8": (torch.float32, BlockBits()),
    "int4-head": (torch.float32, BlockBits(head=4, blocks=8)),
    "int4-head-int8-lookups": (torch.float32, BlockBits(head=4, blocks=8, lookup=8)),
    "int4-everywhere": (torch.float32, BlockBits(head=4, blocks=4)),
}


@pytest.fixture(scope="module")
def kernels(tmp_path_factory: pytest.TempPathFactory) -> Q8Kernels:
    built = load_kernels(tmp_path_factory.mktemp("kernels"))
    if built is None:
        pytest.skip("no C compiler: the int8 kernels cannot be built")
    return built


@pytest.fixture(scope="module", params=["tied", "untied"])
def checkpoint(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> SafetensorsCheckpoint:
    model = build_text_model("4b")
    if request.param == "untied":
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone() * 0.5)
    directory = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(directory)
    return SafetensorsCheckpoint(directory)


@pytest.mark.parametrize("name", list(FORMATS))
def test_the_weights_estimate_is_the_converted_model_bytes(
    name: str, checkpoint: SafetensorsCheckpoint, kernels: Q8Kernels, tmp_path: Path
) -> None:
    dtype, bits = FORMATS[name]
    config = Gemma3Config.from_hf(checkpoint.config)
    tied = bool(checkpoint.config["tie_word_embeddings"])
    assert tied == ("lm_head.weight" not in checkpoint)
    convert_weights(
        checkpoint,
        lean_weight_sources(config, tied=tied),
        config,
        tmp_path / "w.safetensors",
        dtype=dtype,
        kernels=kernels if bits else None,
        bits=bits or BlockBits(),
        tied=tied,
        calibration_ids=CALIBRATION_IDS,
    )
    with safe_open(str(tmp_path / "w.safetensors"), framework="pt") as f:
        tensors = [f.get_tensor(k) for k in f.keys()]  # noqa: SIM118 - a handle, not a dict
    held = sum(t.numel() * t.element_size() for t in tensors)
    estimate = estimate_memory(
        config,
        quantized=bits is not None,
        dtype=dtype,
        tied=tied,
        head_bits=(bits or BlockBits()).head,
        block_bits=(bits or BlockBits()).blocks,
        lookup_bits=(bits or BlockBits()).lookup,
    )
    assert estimate.weights_bytes == held
    # ... and what the model holds in memory once loaded (the tied table counted once).
    model = load_hf_state_dict(config, checkpoint, dtype)
    if bits is not None:
        quantize_model(model, kernels, tied=tied, bits=bits)
    assert estimate.weights_bytes == _weights_bytes(model)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_the_kv_estimate_is_what_the_cache_holds_at_every_length(dtype: torch.dtype) -> None:
    config = Gemma3Config.from_hf(build_text_model("1b").config.to_dict())
    assert any(config.sliding_layers)  # both kinds of layers
    assert not all(config.sliding_layers)
    estimate = estimate_memory(
        config, quantized=dtype == torch.float16, dtype=torch.float32, tied=True, chunk=32
    )
    for tokens in (1, 15, 16, 17, config.sliding_window, 47, 48, 49, 100, 1000):
        cache = KVCache(config, slots=2, dtype=dtype, chunk=32)
        cache.ensure(1, tokens, exact=True)
        assert cache.slot_nbytes(1) == estimate.kv_bytes(tokens), tokens
    # Past the ring, each token adds the global layers' keys and values only.
    assert estimate.kv_bytes(1016) - estimate.kv_bytes(1000) == 16 * estimate.kv_bytes_per_token


def _published(directory: Path, **fields: object) -> ModelSource:
    """A checkpoint directory holding only a published config.json (the check reads no more)."""
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": "gemma3_text", **fields}))
    return ModelSource(directory)


GEMMA3_4B = dict(
    hidden_size=2560,
    intermediate_size=10240,
    num_hidden_layers=34,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=256,
    vocab_size=262_208,
    sliding_window=1024,
)
GEMMA3_270M = dict(
    hidden_size=640,
    intermediate_size=2048,
    num_hidden_layers=18,
    num_attention_heads=4,
    num_key_value_heads=1,
    head_dim=256,
    vocab_size=262_144,
    sliding_window=512,
)


def test_a_model_whose_int8_weights_fit_is_converted_not_refused_for_its_float32_size(
    kernels: Q8Kernels, tmp_path: Path
) -> None:
    source = _published(tmp_path / "gemma-3-4b", **GEMMA3_4B)
    config = Gemma3Config.from_hf(
        complete_text_config(json.loads((source.directory / "config.json").read_text()))
    )
    estimate = estimate_memory(config, quantized=True, dtype=torch.float32, tied=True)
    limit_mb = max(estimate.required_bytes, estimate.conversion_bytes) // 2**20 + 64
    assert 4 * estimate.parameters > 3 * limit_mb * 2**20  # the float32 model would not fit
    settings = get_settings(performance={"memory_limit_mb": limit_mb, "kv_cache_budget_mb": 0})
    weights = WeightFormat.q8(kernels)
    assert check_memory(settings, source, weights, converting=True) == limit_mb * 2**20


def test_a_conversion_whose_largest_weight_would_not_fit_is_refused_with_the_numbers(
    kernels: Q8Kernels, tmp_path: Path
) -> None:
    """270M: the int8 model is small, so converting it (a piece of the table at a time, with
    its rounding's temporaries) takes more than running it."""
    source = _published(tmp_path / "gemma-3-270m", **GEMMA3_270M)
    config = Gemma3Config.from_hf(
        complete_text_config(json.loads((source.directory / "config.json").read_text()))
    )
    estimate = estimate_memory(config, quantized=True, dtype=torch.float32, tied=True)
    assert estimate.conversion_bytes > estimate.required_bytes
    limit_mb = (estimate.required_bytes + estimate.conversion_bytes) // 2 // 2**20
    settings = get_settings(performance={"memory_limit_mb": limit_mb, "kv_cache_budget_mb": 0})
    weights = WeightFormat.q8(kernels)
    assert check_memory(settings, source, weights, converting=False) == limit_mb * 2**20
    with pytest.raises(ModelTooLargeError, match="converting it once"):
        check_memory(settings, source, weights, converting=True)


GEMMA4_E2B = dict(  # its published text config (scripts/gemma_memory.py cites the source)
    hidden_size=1536,
    intermediate_size=6144,
    num_hidden_layers=35,
    num_attention_heads=8,
    num_key_value_heads=1,
    head_dim=256,
    global_head_dim=512,
    vocab_size=262_144,
    sliding_window=512,
    hidden_size_per_layer_input=256,
    vocab_size_per_layer_input=262_144,
    num_kv_shared_layers=20,
    use_double_wide_mlp=True,
    layer_types=["full_attention" if (i + 1) % 5 == 0 else "sliding_attention" for i in range(35)],
)


def test_a_gemma4_whose_int8_weights_fit_is_converted_not_refused_for_its_float32_size(
    kernels: Q8Kernels, tmp_path: Path
) -> None:
    """E2B: 4.6 B parameters (18 GB in float32), converted a piece of a weight at a time: its
    first load needs its int8 weights, not its float32 model (the old whole conversion's)."""
    directory = tmp_path / "gemma-4-e2b"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": "gemma4_text", **GEMMA4_E2B}))
    source = ModelSource(directory)
    config = text_config_from_hf(complete_text_config(dict(GEMMA4_E2B, model_type="gemma4_text")))
    assert isinstance(config, Gemma4Config)
    estimate = estimate_memory(config, quantized=True, dtype=torch.float32, tied=True)
    # the per-layer table (2.3 B weights) is read in pieces: the peak is the converted model's
    assert estimate.converting_bytes < 2**30 < estimate.weights_bytes
    assert estimate.conversion_bytes == estimate.weights_bytes
    limit_mb = max(estimate.required_bytes, estimate.conversion_bytes) // 2**20 + 64
    assert 4 * estimate.parameters > 3 * limit_mb * 2**20  # the float32 model would not fit
    settings = get_settings(performance={"memory_limit_mb": limit_mb, "kv_cache_budget_mb": 0})
    weights = WeightFormat.q8(kernels)
    assert check_memory(settings, source, weights, converting=True) == limit_mb * 2**20
