"""The engine's text models by architecture: which model class a config builds, how a
checkpoint's weights load into it, how it is quantized. The one place that tells Gemma 3 (its
fused C blocks, ``model.py`` + ``q8.py``) from Gemma 4 (torch code around int8 products,
``gemma4.py``); the rest of the engine holds a ``TextModel``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeGuard

import torch

from gemma_chat.infrastructure.llm.engine.config import Gemma3Config, Gemma4Config, TextConfig
from gemma_chat.infrastructure.llm.engine.gemma4 import (
    Gemma4Model,
    Part,
    empty_quantized_gemma4,
    gemma4_weight_sources,
    load_gemma4_state_dict,
    quantize_gemma4,
)
from gemma_chat.infrastructure.llm.engine.model import Gemma3Model
from gemma_chat.infrastructure.llm.engine.q8 import (
    BlockBits,
    Q8Kernels,
    empty_q8_model,
    quantize_model,
)
from gemma_chat.infrastructure.llm.engine.weights import lean_weight_sources, load_hf_state_dict

__all__ = [
    "TextModel",
    "empty_quantized",
    "load_state_dict",
    "new_model",
    "quantize",
    "takes_calibration",
    "weight_sources",
]

TextModel = Gemma3Model | Gemma4Model


def new_model(config: TextConfig) -> TextModel:
    """The model of a config, its weights not set (build it on the meta device)."""
    if isinstance(config, Gemma4Config):
        return Gemma4Model(config)
    return Gemma3Model(config)


def load_state_dict(
    config: TextConfig, state: Mapping[str, torch.Tensor], dtype: torch.dtype
) -> TextModel:
    """The model holding a checkpoint's weights (transformers' names, no prefix)."""
    if isinstance(config, Gemma4Config):
        return load_gemma4_state_dict(config, state, dtype)
    return load_hf_state_dict(config, state, dtype)


def weight_sources(config: TextConfig, *, tied: bool) -> Mapping[str, tuple[Part, ...]]:
    """Each weight of the model and the checkpoint tensors it is made of (the architecture's
    mapping: ``weights.lean_weight_sources``, ``gemma4.gemma4_weight_sources``)."""
    if isinstance(config, Gemma4Config):
        return gemma4_weight_sources(config, tied=tied)
    return lean_weight_sources(config, tied=tied)


def takes_calibration(config: TextConfig) -> TypeGuard[Gemma3Config]:
    """Whether the 4-bit rounding weighs its errors by the model's measured inputs, block by
    block (``calibration.BlockByBlockImportance`` runs Gemma 3's float blocks, and gives a tied
    4-bit head's GPTQ inputs): Gemma 3 converts through ``conversion.convert_weights``; Gemma 4
    converts a piece of a weight at a time (``conversion.convert_streamed``), its blocks'
    4-bit rounding unweighted, its tied 4-bit head's GPTQ fitted on its int8 model's head
    inputs (``calibration.head_statistics``, ``Gemma4Model.head_inputs``)."""
    return isinstance(config, Gemma3Config)


def quantize(
    model: TextModel,
    kernels: Q8Kernels,
    *,
    tied: bool,
    bits: BlockBits,
    importance: Mapping[str, torch.Tensor] | None = None,
) -> None:
    if isinstance(model, Gemma4Model):
        quantize_gemma4(model, kernels, tied=tied, bits=bits)
    else:
        quantize_model(model, kernels, tied=tied, bits=bits, importance=importance)


def empty_quantized(
    model: TextModel, kernels: Q8Kernels, *, tied: bool, bits: BlockBits, huge_pages: bool = True
) -> None:
    if isinstance(model, Gemma4Model):
        empty_quantized_gemma4(model, kernels, tied=tied, bits=bits, huge_pages=huge_pages)
    else:
        empty_q8_model(model, kernels, tied=tied, bits=bits, huge_pages=huge_pages)
