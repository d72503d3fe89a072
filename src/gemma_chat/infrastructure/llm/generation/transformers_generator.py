"""Any transformers causal LM, one request at a time on a worker thread (CPU or CUDA)."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from gemma_chat.domain.models import FinishReason
from gemma_chat.infrastructure.llm.generation.chat_format import END_OF_TURN
from gemma_chat.infrastructure.llm.generation.decoding import Forward, generate_scored_tokens
from gemma_chat.infrastructure.llm.generation.job import GenerationJob
from gemma_chat.infrastructure.llm.generation.sampling import TokenSampler
from gemma_chat.infrastructure.llm.loading.model_source import ModelSource
from gemma_chat.infrastructure.llm.loading.precision import PrecisionPlan
from gemma_chat.infrastructure.llm.tokenizers.transformers_tokenizer import TransformersTokenizer
from gemma_chat.shared.config import Settings

__all__ = ["TransformersGenerator"]


class TransformersGenerator:
    def __init__(
        self, settings: Settings, plan: PrecisionPlan, source: ModelSource, attention: str | None
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        source.ensure_present()
        self._settings = settings
        self._plan = plan
        self._checkpoint_format = "gguf" if source.gguf_file else "safetensors"
        common: dict[str, Any] = {
            "local_files_only": True,
            "trust_remote_code": settings.model.trust_remote_code,
        }
        if source.gguf_file:
            common["gguf_file"] = source.gguf_file
        if settings.model.revision:
            common["revision"] = settings.model.revision
        hf_tokenizer: Any = AutoTokenizer.from_pretrained(source.directory, **common)
        model_kwargs: dict[str, Any] = {
            # GGUF blocks de-quantize to float32; casting afterwards gives the same weights.
            "dtype": torch.float32 if source.gguf_file else plan.dtype
        }
        if attention:
            model_kwargs["attn_implementation"] = attention
        if plan.bnb_config is not None:
            model_kwargs["quantization_config"] = plan.bnb_config
            model_kwargs["device_map"] = {"": 0}
        model: Any = AutoModelForCausalLM.from_pretrained(
            source.directory, **common, **model_kwargs
        )
        if plan.bnb_config is None:
            model.to(device=plan.device, dtype=plan.dtype)
        model.eval()
        if plan.cpu_dynamic_int8:
            model = _quantize_dynamic_int8(model)
        self.model = model
        self.tokenizer = TransformersTokenizer(hf_tokenizer)
        self.forward: Forward = (
            torch.compile(model.forward, dynamic=True)
            if settings.performance.compile
            else model.forward
        )
        self._end_ids = _end_of_turn_ids(self.tokenizer, model)
        # One thread: requests queue here instead of contending for the weights.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gemma-llm")

    @property
    def context_length(self) -> int | None:
        limit = getattr(self.model.config, "max_position_embeddings", None)
        return int(limit) if limit else None

    @property
    def end_ids(self) -> frozenset[int]:
        return self._end_ids

    @property
    def vocab_size(self) -> int:
        """The width of the model's logits (may exceed the tokenizer's vocabulary)."""
        return int(self.model.get_output_embeddings().weight.shape[0])

    def submit(self, job: GenerationJob) -> None:
        self._executor.submit(self._run, job)

    def wake(self) -> None:
        """Nothing to do: generation checks for cancellation at every token."""

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.model = None
        if self._plan.device == "cuda":
            torch.cuda.empty_cache()

    def info(self) -> dict[str, Any]:
        config = self.model.config
        return {
            "engine": "transformers",
            "architecture": getattr(config, "model_type", None),
            "checkpoint_format": self._checkpoint_format,
            "quantization": (
                "none" if self._plan.quantization == "auto" else self._plan.quantization
            ),
            "memory_footprint_mb": round(self.model.get_memory_footprint() / 2**20, 1),
            "weights_mb": round(self.model.get_memory_footprint() / 2**20, 1),
            "kv_cache_mb_per_1k_tokens": _kv_mb_per_1k_tokens(config, self.model.dtype),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "attn_implementation": getattr(self.model.config, "_attn_implementation", None),
        }

    def _run(self, job: GenerationJob) -> None:
        if job.cancel.is_set():  # cancelled while it waited for the worker thread
            job.finish(FinishReason.CANCELLED)
            return
        try:
            from transformers import DynamicCache

            with torch.inference_mode():
                device = self.model.device
                input_ids = torch.tensor([job.prompt_ids], dtype=torch.long, device=device)
                tokens = generate_scored_tokens(
                    self.forward,
                    input_ids,  # [1, S]
                    DynamicCache(config=self.model.config),
                    TokenSampler(job.sampling, device=device),
                    job.max_new_tokens,
                    job.constraint,
                )
                for token, logits in tokens:
                    if not job.accept(token, job.score(logits, token)):
                        break
                job.finish(FinishReason.LENGTH)  # no-op unless the tokens ran out first
        except BaseException as exc:
            job.fail(exc)
        finally:
            if (
                self._plan.device == "cuda"
                and self._settings.performance.empty_cache_after_inference
            ):
                torch.cuda.empty_cache()


def _end_of_turn_ids(tokenizer: TransformersTokenizer, model: Any) -> frozenset[int]:
    ids: set[int] = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    for candidate in (tokenizer.eos_token_id, tokenizer.token_id(END_OF_TURN)):
        if candidate is not None:
            ids.add(candidate)
    return frozenset(ids)


def _quantize_dynamic_int8(model: Any) -> Any:
    from torch.ao.quantization import per_channel_dynamic_qconfig
    from torch.ao.quantization import quantize_dynamic as _quantize_dynamic

    quantize_dynamic: Any = _quantize_dynamic  # untyped in torch
    with warnings.catch_warnings():
        # torch marks torch.ao as deprecated in favour of torchao, which is slow eagerly on CPU.
        warnings.simplefilter("ignore")
        return quantize_dynamic(
            model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8
        )


def _kv_mb_per_1k_tokens(config: Any, dtype: torch.dtype) -> float | None:
    """Keys and values of 1024 tokens in every layer, in the model's dtype (an upper bound: a
    sliding-window layer's cache may keep only its window), if the config says its shapes."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = getattr(text, "num_hidden_layers", None)
    heads = getattr(text, "num_key_value_heads", None)
    head_dim = getattr(text, "head_dim", None)
    if not (isinstance(layers, int) and isinstance(heads, int) and isinstance(head_dim, int)):
        return None
    itemsize = torch.empty((), dtype=dtype).element_size()
    return round(2 * layers * heads * head_dim * itemsize * 1024 / 2**20, 2)
