"""``NativeGenerator``: the native engine behind ``TokenGenerator`` (lean Gemma 3 and 4, continuous
batching, KV reuse, converted weights cached on disk); ``supports`` says which checkpoints it runs.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import torch

from gemma_chat.domain.errors import ConfigurationError, ModelLoadError, ModelTooLargeError
from gemma_chat.infrastructure.llm.engine.architecture import architecture_named
from gemma_chat.infrastructure.llm.engine.checkpoint import gguf_architecture, read_text_config
from gemma_chat.infrastructure.llm.engine.config import TextConfig, text_config_from_hf
from gemma_chat.infrastructure.llm.engine.converted_store import ConvertedModelStore, WeightFormat
from gemma_chat.infrastructure.llm.engine.memory import (
    RESERVED_TOKENS,
    MemoryEstimate,
    available_memory_bytes,
    estimate_memory,
)
from gemma_chat.infrastructure.llm.engine.native import choose_variant
from gemma_chat.infrastructure.llm.engine.q8 import load_kernels
from gemma_chat.infrastructure.llm.engine.scheduler import BatchScheduler
from gemma_chat.infrastructure.llm.generation.chat_format import END_OF_TURN
from gemma_chat.infrastructure.llm.generation.job import GenerationJob
from gemma_chat.infrastructure.llm.loading.model_source import ModelSource
from gemma_chat.infrastructure.llm.loading.precision import PrecisionPlan
from gemma_chat.shared.config import Settings

__all__ = ["NativeGenerator", "refusal", "supports"]

logger = logging.getLogger(__name__)


def supports(source: ModelSource) -> bool:
    """Whether the engine can run this checkpoint (a Gemma 3 or Gemma 4 text model)."""
    return refusal(source) is None


def refusal(source: ModelSource) -> str | None:
    """Why the engine cannot run this checkpoint, or None when it can."""
    if source.architecture is not None:
        name: str | None = source.architecture
    elif source.gguf_path is not None:
        try:
            name = gguf_architecture(source.gguf_path)
        except (OSError, ValueError) as exc:
            return f"its GGUF file does not read ({exc})"
        name = f"{name}_text" if architecture_named(f"{name}_text") else name
    else:
        try:
            config = json.loads((source.directory / "config.json").read_text())
        except (OSError, ValueError):
            return "it has no readable config.json"
        name = config.get("model_type")
        if not any(source.directory.glob("*.safetensors")):
            return "it has no .safetensors weights"
        if not any((source.directory / f).is_file() for f in _TOKENIZER_FILES):
            return "it has no tokenizer.json or tokenizer.model"
    architecture = architecture_named(name)
    if architecture is None:
        return f"it runs Gemma 3 and Gemma 4 text models, not {name!r}"
    return architecture.unsupported


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


def weight_format(settings: Settings, plan: PrecisionPlan) -> WeightFormat:
    """int8 blocks when asked for, or by default where the kernel variant that runs has vector
    int8 products (AVX-512 VNNI or AVX2; their portable loops are slower than bfloat16); else the
    dtype. A kernel variant named in the settings that this CPU cannot run is refused here.
    Quantized weights carry ``performance.huge_pages`` (where they live once loaded)."""
    variant = settings.performance.kernel_variant
    choose_variant(variant)  # a named one this CPU cannot run: refused before anything loads
    if plan.quantization == "int4":
        kernels = load_kernels(settings.cache_dir, variant=variant)
        if kernels is None:
            raise ConfigurationError(
                "GEMMA_MODEL__QUANTIZATION=int4 on the native engine needs a C compiler to "
                "build its kernels once (`apt-get install gcc`); or use quantization=none."
            )
        return WeightFormat.q4(kernels, huge_pages=settings.performance.huge_pages)
    if plan.quantization in ("auto", "int8"):
        kernels = load_kernels(settings.cache_dir, variant=variant)
        if kernels is not None and (kernels.vectorized or plan.quantization == "int8"):
            return WeightFormat.q8(kernels, huge_pages=settings.performance.huge_pages)
        if kernels is not None:
            logger.info(
                "No vector int8 products in the %s kernels (neither AVX-512 VNNI nor AVX2 with "
                "FMA and F16C): bfloat16 weights, faster here than int8",
                kernels.variant,
            )
            return WeightFormat.floating(plan.dtype)
        if plan.quantization == "int8":
            raise ConfigurationError(
                "GEMMA_MODEL__QUANTIZATION=int8 on the native engine needs a C compiler to "
                "build its kernels once (`apt-get install gcc`); or use quantization=none."
            )
    return WeightFormat.floating(plan.dtype)


class NativeGenerator:
    """Loads (or converts) the model and hands jobs to the ``BatchScheduler``'s thread."""

    def __init__(self, settings: Settings, source: ModelSource, plan: PrecisionPlan) -> None:
        store = ConvertedModelStore(settings.cache_dir)
        self.weights = weight_format(settings, plan)
        stored = store.stored_config(source, self.weights)
        self.memory_limit_bytes = check_memory(
            settings, source, self.weights, converting=stored is None, stored_config=stored
        )
        converted = store.load_or_convert(source, self.weights)
        self.model = converted.model
        stored = json.loads((converted.directory / "config.json").read_text())
        self.checkpoint = stored.get("checkpoint") or {  # an entry converted before it said
            "format": "gguf" if source.gguf_file else "safetensors",
            "architecture": stored.get("model_type"),
        }
        self.memory = _estimate(
            self.model.config,
            self.weights,
            tied=bool(stored.get("tie_word_embeddings", True)),
            prefix_budget_bytes=settings.performance.kv_cache_budget_mb * 2**20,
        )
        self.tokenizer = converted.tokenizer
        self.directory = converted.directory
        self._end_ids = frozenset(
            i
            for i in (
                self.tokenizer.eos_token_id,
                self.tokenizer.token_id(END_OF_TURN),
                *self.model.config.eos_token_ids,  # e.g. an instruction-tuned model's turn end
            )
            if i is not None
        )
        self.scheduler = BatchScheduler(
            self.model,
            max_batch_size=settings.performance.max_batch_size,
            dtype=self.model.kv_dtype,
            prefix_budget_bytes=settings.performance.kv_cache_budget_mb * 2**20,
            idle_release_seconds=settings.performance.kv_idle_release_seconds,
        )

    @property
    def context_length(self) -> int | None:
        return self.model.config.max_position_embeddings

    @property
    def end_ids(self) -> frozenset[int]:
        return self._end_ids

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    def submit(self, job: GenerationJob) -> None:
        self.scheduler.submit(job)

    def wake(self) -> None:
        self.scheduler.wake()

    def close(self) -> None:
        self.scheduler.close()

    def info(self) -> dict[str, Any]:
        cache = self.scheduler.cache.nbytes + self.scheduler.store.nbytes
        return {
            "engine": "native",
            # What runs: the checkpoint's architecture and format, and the engine's own format.
            "architecture": self.checkpoint.get("architecture"),
            "checkpoint_format": self.checkpoint["format"],
            "checkpoint_types": self.checkpoint.get("stored"),
            "weights_mb": round(_weights_bytes(self.model) / 2**20, 1),
            "kv_cache_mb": round(cache / 2**20, 1),  # held now: slots and stored prefixes
            # Computed from the config (memory.py): what a conversation's keys and values take.
            "kv_cache_mb_per_1k_tokens": self.memory.describe()["kv_cache_mb_per_1k_tokens"],
            f"kv_cache_mb_at_{RESERVED_TOKENS}_tokens": round(
                self.memory.kv_bytes(RESERVED_TOKENS) / 2**20, 1
            ),
            "memory_limit_mb": (
                round(self.memory_limit_bytes / 2**20) if self.memory_limit_bytes else None
            ),
            "weights": self.weights.name,
            # which weights run: int8 or int4 blocks, or "none" (the float dtype below)
            "quantization": self.weights.quantization,
            # The C kernels' build the model computes with (native.VARIANTS), if any.
            "kernels": self.weights.kernels.variant if self.weights.kernels is not None else None,
            "dtype": str(self.model.compute_dtype).removeprefix("torch."),
            "kv_cache_dtype": str(self.model.kv_dtype).removeprefix("torch."),
            "parameters": sum(p.numel() for p in (*self.model.parameters(), *self.model.buffers())),
            "memory_footprint_mb": round(
                (
                    _weights_bytes(self.model)
                    + self.scheduler.cache.nbytes
                    + self.scheduler.store.nbytes
                )
                / 2**20,
                1,
            ),
            "converted_cache": str(self.directory),
            "scheduler": self.scheduler.info(),
        }


def check_memory(
    settings: Settings,
    source: ModelSource,
    weights: WeightFormat,
    *,
    converting: bool,
    stored_config: dict[str, Any] | None = None,
) -> int | None:
    """Refuse, before anything loads, a model that would not fit the memory limit, running or
    (``converting``) while it is converted (``ModelTooLargeError``, with the numbers); the
    limit in bytes, if known. ``stored_config``: the config a converted entry holds, read
    instead of the checkpoint's header."""
    limit_mb = settings.performance.memory_limit_mb
    if limit_mb is not None:
        limit, where = limit_mb * 2**20, "GEMMA_PERFORMANCE__MEMORY_LIMIT_MB"
    else:
        available = available_memory_bytes()
        if available is None:
            return None
        limit, where = available, "the memory this system has available now"
    try:
        config = stored_config or read_text_config(source.directory, source.gguf_file)
        if config is None:  # not on disk yet (the embedded model, assembled on first use)
            return limit
        estimate = _estimate(
            text_config_from_hf(config),
            weights,
            tied=bool(config.get("tie_word_embeddings", True)),
            prefix_budget_bytes=settings.performance.kv_cache_budget_mb * 2**20,
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{source.gguf_path or source.directory}: {exc}") from exc
    name = str(source.gguf_path or source.directory)
    if estimate.required_bytes > limit:
        raise ModelTooLargeError(
            name,
            weights_mb=estimate.weights_bytes / 2**20,
            kv_cache_mb=estimate.kv_reserved_bytes / 2**20,
            budget_mb=limit / 2**20,
            where=where,
        )
    if converting and estimate.conversion_bytes > limit:
        raise ModelTooLargeError(
            name,
            weights_mb=estimate.conversion_bytes / 2**20,
            kv_cache_mb=0.0,
            budget_mb=limit / 2**20,
            where=(
                f"{where}; converting it once holds the converted model and its largest "
                "weight (or piece of a weight) in float32, and a 4-bit head's conversion the "
                "int8 model it is fitted on"
            ),
        )
    return limit


def _estimate(
    config: TextConfig, weights: WeightFormat, *, tied: bool, prefix_budget_bytes: int
) -> MemoryEstimate:
    return estimate_memory(
        config,
        quantized=weights.kernels is not None,
        dtype=weights.dtype,
        tied=tied,
        prefix_budget_bytes=prefix_budget_bytes,
        head_bits=weights.bits.head,
        block_bits=weights.bits.blocks,
        lookup_bits=weights.bits.lookup,
    )


def _weights_bytes(model: torch.nn.Module) -> int:
    # Tied weights are one tensor: count each storage once.
    seen: dict[int, int] = {}
    for p in (*model.parameters(), *model.buffers()):
        seen[p.data_ptr()] = p.numel() * p.element_size()
    return sum(seen.values())
