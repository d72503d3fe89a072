"""Gemma 4 on the engine, from safetensors and from GGUF: the float path computes what
transformers computes, the int8 and 4-bit paths pick the same tokens, batching and prefix reuse
change nothing.

Each case is a tiny random model built from transformers' ``Gemma4TextConfig``
(``gemma4_variants.py``), one per feature: per-layer inputs (E2B/E4B-like); keys and values
shared by the last layers with k = v and the double-wide MLP; a mixture of experts beside the
dense MLP (26B-A4B-like); and the released multimodal layout's text part. Every case has Gemma
4's two head sizes and proportional rotary on the global layers. A GGUF's reference is the same
transformers model holding the GGUF's de-quantized weights.

transformers' reference runs with ``output_hidden_states=True`` (``engine_checks.py``): without
it, a model with shared keys and values but no per-layer inputs fails in transformers 5.24 itself
(its ``_maybe_slice_kv_shared_inputs`` indexes the absent per-layer inputs); the outputs are the
same.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from gemma_chat.infrastructure.llm.engine.checkpoint import (
    Checkpoint,
    GGUFCheckpoint,
    SafetensorsCheckpoint,
)
from gemma_chat.infrastructure.llm.engine.config import Gemma4Config, text_config_from_hf
from gemma_chat.infrastructure.llm.engine.conversion import largest_read
from gemma_chat.infrastructure.llm.engine.gemma4 import Gemma4Model
from gemma_chat.infrastructure.llm.engine.generator import _weights_bytes
from gemma_chat.infrastructure.llm.engine.kv_cache import KVCache
from gemma_chat.infrastructure.llm.engine.memory import _STREAMED_BYTES_PER_WEIGHT, estimate_memory
from gemma_chat.infrastructure.llm.engine.q8 import BlockBits, Q8Kernels
from gemma_chat.infrastructure.llm.engine.text_models import load_state_dict, quantize

from .engine_checks import (
    assert_batched_rows_give_each_sequence_alone,
    assert_reused_prefix_gives_recomputed_bits,
    engine_greedy,
    reference_greedy,
    top1_agreement,
)
from .gemma4_variants import (
    build_multimodal_model,
    build_text_model,
    one_thread,  # noqa: F401 (a fixture)
    one_thread_kernels,  # noqa: F401 (the fixture kernels)
    write_gguf,
)

STEPS = 64
# Largest |difference| allowed between the float path's logits and transformers' (float32 both;
# the logits of these models are of order 10, capped at 30).
LOGITS_TOLERANCE = 1e-3
TOP1_AGREEMENT = 0.98


def _safetensors(
    variant: str, multimodal: bool = False
) -> Callable[[Path], tuple[Any, Checkpoint]]:
    def build(directory: Path) -> tuple[Any, Checkpoint]:
        model = build_multimodal_model(variant) if multimodal else build_text_model(variant)
        model.save_pretrained(directory)
        return model, SafetensorsCheckpoint(directory)

    return build


def _gguf(variant: str, quant: str) -> Callable[[Path], tuple[Any, Checkpoint]]:
    def build(directory: Path) -> tuple[Any, Checkpoint]:
        model = build_text_model(variant)
        checkpoint = GGUFCheckpoint(write_gguf(model, directory / f"model-{quant}.gguf", quant))
        reference = copy.deepcopy(model)
        state = {f"model.{name}": checkpoint[name] for name in checkpoint}
        reference.load_state_dict(state, strict=False)  # lm_head: tied to the embedding
        return reference, checkpoint

    return build


CASES: dict[str, Callable[[Path], tuple[Any, Checkpoint]]] = {
    "ple-safetensors": _safetensors("ple"),
    "shared-kv-safetensors": _safetensors("shared-kv"),
    "moe-safetensors": _safetensors("moe"),
    "ple-multimodal-safetensors": _safetensors("ple", multimodal=True),
    "ple-gguf-Q8_0": _gguf("ple", "Q8_0"),
    "shared-kv-gguf-F16": _gguf("shared-kv", "F16"),
    "moe-gguf-Q4_0": _gguf("moe", "Q4_0"),
}


class Case:
    def __init__(self, reference: Any, checkpoint: Checkpoint) -> None:
        self.reference = reference
        self.checkpoint = checkpoint
        config = text_config_from_hf(checkpoint.config)
        assert isinstance(config, Gemma4Config)
        self.config = config
        self.tied = bool(checkpoint.config["tie_word_embeddings"])
        self.float_model = load_state_dict(config, checkpoint, torch.float32)
        prompt = torch.randint(10, 500, (1, 8), generator=torch.Generator().manual_seed(0))
        self.tokens, self.logits = reference_greedy(reference, prompt, STEPS)
        self.prompt = prompt

    def quantized_model(self, kernels: Q8Kernels, bits: BlockBits | None = None) -> Gemma4Model:
        model = load_state_dict(self.config, self.checkpoint, torch.float32)
        quantize(model, kernels, tied=self.tied, bits=bits or BlockBits())
        assert isinstance(model, Gemma4Model)
        return model


_cases: dict[str, Case] = {}


@pytest.fixture(params=list(CASES))
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Case:
    name = request.param
    if name not in _cases:
        _cases[name] = Case(*CASES[name](tmp_path_factory.mktemp(name)))
    return _cases[name]


def test_the_float_path_decodes_transformers_greedy_tokens_and_logits(case: Case) -> None:
    tokens, logits = engine_greedy(case.float_model, case.prompt, STEPS)
    assert tokens == case.tokens
    difference = (logits - case.logits).abs().max().item()
    assert difference <= LOGITS_TOLERANCE


def test_a_prompt_fed_in_several_passes_gives_what_one_pass_gives(case: Case) -> None:
    model = case.float_model
    tokens = torch.randint(10, 500, (1, 40), generator=torch.Generator().manual_seed(3))
    positions = torch.arange(40).view(1, -1)
    with torch.inference_mode():
        whole = model(tokens, positions, torch.tensor([0]), KVCache(model.config, 1, torch.float32))
        pieces = model(  # a chunk of 7: sliding rings wrap, passes continue each other
            tokens, positions, torch.tensor([0]), KVCache(model.config, 1, torch.float32, chunk=7)
        )
    assert (whole - pieces).abs().max().item() <= 1e-4


@pytest.mark.parametrize("bits", [BlockBits(), BlockBits(head=4, blocks=8)], ids=["int8", "int4"])
def test_the_quantized_path_picks_transformers_top_token_on_nearly_every_step(
    case: Case, kernels: Q8Kernels, bits: BlockBits
) -> None:
    model = case.quantized_model(kernels, bits)
    assert top1_agreement(model, case.prompt[0].tolist(), case.tokens) >= TOP1_AGREEMENT


def test_batched_rows_give_what_each_sequence_gives_alone(case: Case, kernels: Q8Kernels) -> None:
    assert_batched_rows_give_each_sequence_alone(case.quantized_model(kernels))


def test_reusing_a_prefix_gives_what_recomputing_it_gives(case: Case, kernels: Q8Kernels) -> None:
    assert_reused_prefix_gives_recomputed_bits(case.quantized_model(kernels))


def test_the_checkpoint_config_is_the_reference_config(case: Case) -> None:
    theirs = case.reference.config.get_text_config().to_dict()
    for key in (
        "hidden_size",
        "intermediate_size",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "per_layer_config",
        "sliding_window",
        "layer_types",
        "rope_parameters",
        "num_kv_shared_layers",
        "attention_k_eq_v",
        "use_double_wide_mlp",
        "hidden_size_per_layer_input",
        "enable_moe_block",
        "num_experts",
        "top_k_experts",
        "moe_intermediate_size",
        "final_logit_softcapping",
    ):
        assert case.checkpoint.config[key] == theirs[key], key


def test_shared_layers_hold_no_keys_and_values(case: Case) -> None:
    config = case.config
    cache = KVCache(config, slots=1, dtype=torch.float32)
    cache.ensure(0, 16)
    held = config.kv_values_per_token() * 16 * 4  # float32
    assert cache.nbytes == held
    sources = config.kv_sources
    for layer, source in enumerate(sources):
        if source != layer:
            assert cache.layer(0, layer)[0].data_ptr() == cache.layer(0, source)[0].data_ptr()


def test_the_memory_estimate_is_what_the_loaded_weights_take(
    case: Case, kernels: Q8Kernels
) -> None:
    floating = estimate_memory(case.config, quantized=False, dtype=torch.float32, tied=case.tied)
    assert floating.weights_bytes == _weights_bytes(case.float_model)
    quantized = estimate_memory(case.config, quantized=True, dtype=torch.float32, tied=case.tied)
    actual = _weights_bytes(case.quantized_model(kernels))  # rows padded to 16
    assert quantized.weights_bytes <= actual <= quantized.weights_bytes * 1.05


def test_the_kv_estimate_is_what_the_cache_holds_at_every_length(case: Case) -> None:
    """Only the layers that compute keys and values hold them; sliding ones keep a ring."""
    config = case.config
    estimate = estimate_memory(config, quantized=True, dtype=torch.float32, tied=case.tied, chunk=8)
    for tokens in (1, 15, 16, 17, config.sliding_window, 47, 48, 49, 100, 300):
        cache = KVCache(config, slots=2, dtype=torch.float16, chunk=8)
        cache.ensure(1, tokens, exact=True)
        assert cache.slot_nbytes(1) == estimate.kv_bytes(tokens), tokens
    assert estimate.kv_bytes(316) - estimate.kv_bytes(300) == 16 * estimate.kv_bytes_per_token
    # It converts a piece of a weight at a time: its first load's peak is that of the largest
    # piece read (test_gemma4_conversion.py measures it), or the converted model read back.
    converting = estimate.converting_bytes
    assert converting == _STREAMED_BYTES_PER_WEIGHT * largest_read(config)
    assert estimate.conversion_bytes == max(estimate.weights_bytes, converting)


def test_a_many_layered_config_gives_its_global_layers_their_shape() -> None:
    """transformers keys ``per_layer_config`` by zero-padded layer numbers past nine ("05")."""
    from transformers import Gemma4TextConfig

    from gemma_chat.infrastructure.llm.engine.architecture import complete_text_config

    theirs = Gemma4TextConfig(
        num_hidden_layers=35,
        global_head_dim=512,
        num_global_key_value_heads=2,
        attention_k_eq_v=True,
        num_key_value_heads=1,
        head_dim=256,
    ).to_dict()
    config = text_config_from_hf(complete_text_config(theirs))
    assert isinstance(config, Gemma4Config)
    assert (config.global_head_dim, config.num_global_kv_heads) == (512, 2)
    assert (config.head_dim, config.num_kv_heads) == (256, 1)
