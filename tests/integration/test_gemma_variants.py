"""Every Gemma 3 shape, from safetensors and from GGUF, on the engine: the float path computes
what transformers computes, the int8 path picks the same tokens, batching and prefix reuse change
nothing.

Each case is a tiny random model built from transformers' own config classes
(``gemma_variants.py``): 1B-like (no rotary scaling), 4B-like (linear rotary scaling of the
global layers, head size != hidden / heads), 27B-like (attention scale from
``query_pre_attn_scalar``), the multimodal checkpoint's text part, and GGUF files in F16, BF16,
Q8_0 and Q4_0 (Q4_K and Q6_K, which the ``gguf`` package reads but cannot write, are the
embedded model's: tests/integration/test_embedded_engine.py). A GGUF's reference is the same
transformers model holding the GGUF's de-quantized weights.
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
from gemma_chat.infrastructure.llm.engine.config import Gemma3Config
from gemma_chat.infrastructure.llm.engine.generator import _weights_bytes
from gemma_chat.infrastructure.llm.engine.memory import estimate_memory
from gemma_chat.infrastructure.llm.engine.model import Gemma3Model
from gemma_chat.infrastructure.llm.engine.q8 import Q8Kernels, quantize_model
from gemma_chat.infrastructure.llm.engine.weights import load_hf_state_dict

from .engine_checks import (
    assert_batched_rows_give_each_sequence_alone,
    assert_reused_prefix_gives_recomputed_bits,
    engine_greedy,
    reference_greedy,
    top1_agreement,
)
from .gemma_variants import build_multimodal_model, build_text_model, write_gguf

STEPS = 64
# Largest |difference| allowed between the float path's logits and transformers' (float32 both;
# the logits of these models are of order 10).
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
    "1b-safetensors": _safetensors("1b"),
    "4b-safetensors": _safetensors("4b"),
    "27b-safetensors": _safetensors("27b"),
    "4b-multimodal-safetensors": _safetensors("4b", multimodal=True),
    "1b-gguf-Q8_0": _gguf("1b", "Q8_0"),
    "4b-gguf-F16": _gguf("4b", "F16"),
    "4b-gguf-BF16": _gguf("4b", "BF16"),
    "4b-gguf-Q4_0": _gguf("4b", "Q4_0"),
}


class Case:
    def __init__(self, reference: Any, checkpoint: Checkpoint) -> None:
        self.reference = reference
        self.checkpoint = checkpoint
        self.config = Gemma3Config.from_hf(checkpoint.config)
        self.float_model = load_hf_state_dict(self.config, checkpoint, torch.float32)
        prompt = torch.randint(10, 500, (1, 8), generator=torch.Generator().manual_seed(0))
        self.tokens, self.logits = reference_greedy(reference, prompt, STEPS)
        self.prompt = prompt

    def int8_model(self, kernels: Q8Kernels) -> Gemma3Model:
        model = load_hf_state_dict(self.config, self.checkpoint, torch.float32)
        quantize_model(model, kernels, tied=bool(self.checkpoint.config["tie_word_embeddings"]))
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


def test_the_int8_path_picks_transformers_top_token_on_nearly_every_step(
    case: Case, kernels: Q8Kernels
) -> None:
    model = case.int8_model(kernels)
    assert top1_agreement(model, case.prompt[0].tolist(), case.tokens) >= TOP1_AGREEMENT


def test_batched_rows_give_what_each_sequence_gives_alone(case: Case, kernels: Q8Kernels) -> None:
    assert_batched_rows_give_each_sequence_alone(case.int8_model(kernels))


def test_reusing_a_prefix_gives_what_recomputing_it_gives(case: Case, kernels: Q8Kernels) -> None:
    assert_reused_prefix_gives_recomputed_bits(case.int8_model(kernels))


def test_the_checkpoint_config_is_the_reference_config(case: Case) -> None:
    theirs = case.reference.config.get_text_config().to_dict()
    for key in (
        "hidden_size",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "query_pre_attn_scalar",
        "sliding_window",
        "layer_types",
        "rope_parameters",
    ):
        assert case.checkpoint.config[key] == theirs[key], key


def test_the_memory_estimate_is_what_the_loaded_weights_take(
    case: Case, kernels: Q8Kernels
) -> None:
    tied = bool(case.checkpoint.config["tie_word_embeddings"])
    floating = estimate_memory(case.config, quantized=False, dtype=torch.float32, tied=tied)
    assert floating.weights_bytes == _weights_bytes(case.float_model)
    quantized = estimate_memory(case.config, quantized=True, dtype=torch.float32, tied=tied)
    assert quantized.weights_bytes == _weights_bytes(case.int8_model(kernels))
