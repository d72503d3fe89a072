"""``NativeGenerator``: the native engine behind ``TokenGenerator`` (lean Gemma 3, continuous
batching, KV reuse, converted weights cached on disk); ``supports`` says which checkpoints it runs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from gemma_chat.domain.errors import ConfigurationError
from gemma_chat.infrastructure.llm.engine.converted_store import ConvertedModelStore, WeightFormat
from gemma_chat.infrastructure.llm.engine.native import choose_variant
from gemma_chat.infrastructure.llm.engine.q8 import load_kernels
from gemma_chat.infrastructure.llm.engine.scheduler import BatchScheduler
from gemma_chat.infrastructure.llm.generation.chat_format import END_OF_TURN
from gemma_chat.infrastructure.llm.generation.job import GenerationJob
from gemma_chat.infrastructure.llm.loading.model_source import ModelSource
from gemma_chat.infrastructure.llm.loading.precision import PrecisionPlan
from gemma_chat.shared.config import Settings

__all__ = ["NativeGenerator", "supports"]

logger = logging.getLogger(__name__)

_ARCHITECTURES = {"gemma3_text", "gemma3"}


def supports(source: ModelSource) -> bool:
    """Whether the engine can run this checkpoint (a Gemma 3 text model)."""
    if source.architecture is not None:
        return source.architecture in _ARCHITECTURES
    if source.gguf_path is not None:
        return _gguf_architecture(source.gguf_path) in _ARCHITECTURES
    config_path = source.directory / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError):
        return False
    return (
        config.get("model_type") == "gemma3_text"
        and (source.directory / "tokenizer.json").is_file()
        and any(source.directory.glob("*.safetensors"))
    )


def _gguf_architecture(path: Path) -> str | None:
    from gguf import GGUFReader

    field = GGUFReader(path).fields.get("general.architecture")
    return str(field.contents()) if field is not None else None


def weight_format(settings: Settings, plan: PrecisionPlan) -> WeightFormat:
    """int8 blocks when asked for, or by default where the kernel variant that runs has vector
    int8 products (AVX-512 VNNI or AVX2; their portable loops are slower than bfloat16); else the
    dtype. A kernel variant named in the settings that this CPU cannot run is refused here."""
    variant = choose_variant(settings.performance.kernel_variant).name
    if plan.quantization == "int4":
        kernels = load_kernels(settings.cache_dir, variant=variant)
        if kernels is None:
            raise ConfigurationError(
                "GEMMA_MODEL__QUANTIZATION=int4 on the native engine needs a C compiler to "
                "build its kernels once (`apt-get install gcc`); or use quantization=none."
            )
        return WeightFormat.q4(kernels)
    if plan.quantization in ("auto", "int8"):
        kernels = load_kernels(settings.cache_dir, variant=variant)
        if kernels is not None and (kernels.vectorized or plan.quantization == "int8"):
            return WeightFormat.q8(kernels)
        if kernels is not None:
            logger.info(
                "No vector int8 products in the %s kernels (neither AVX-512 VNNI nor AVX2 with "
                "FMA and F16C): bfloat16 weights, faster here than int8",
                variant,
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
        converted = store.load_or_convert(source, self.weights)
        self.model = converted.model
        self.tokenizer = converted.tokenizer
        self.directory = converted.directory
        self._end_ids = frozenset(
            i
            for i in (self.tokenizer.eos_token_id, self.tokenizer.token_id(END_OF_TURN))
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
        return {
            "engine": "native",
            "weights": self.weights.name,
            # which weights run: int8 or int4 blocks, or "none" (the float dtype below)
            "quantization": self.weights.quantization,
            # The C kernels' build the model computes with (native.VARIANTS), if any.
            "kernels": self.weights.kernels.variant if self.weights.kernels is not None else None,
            "dtype": str(self.model.compute_dtype).removeprefix("torch."),
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


def _weights_bytes(model: torch.nn.Module) -> int:
    # Tied weights are one tensor: count each storage once.
    seen: dict[int, int] = {}
    for p in (*model.parameters(), *model.buffers()):
        seen[p.data_ptr()] = p.numel() * p.element_size()
    return sum(seen.values())
