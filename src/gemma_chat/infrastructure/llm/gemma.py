"""``GemmaLLM``: Gemma (and other causal LMs) on transformers, on CPU or CUDA.

Loads the embedded Gemma 3 270M GGUF by default, a local directory or .gguf file, or a hub id
already in the local cache. Generation runs on one worker thread per model, so the event loop
stays free; the token loop checks for cancellation at every step.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
import warnings
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from gemma_chat.domain.models import (
    ChatMessage,
    Completion,
    FinishReason,
    StreamChunk,
    TokenUsage,
)
from gemma_chat.infrastructure.llm.base import BaseLLM
from gemma_chat.infrastructure.llm.chat_format import END_OF_TURN, ChatFormat, choose_chat_format
from gemma_chat.infrastructure.llm.decoding import (
    Forward,
    IncrementalDetokenizer,
    SamplingParams,
    TokenSampler,
    generate_tokens,
)
from gemma_chat.infrastructure.llm.model_source import ModelSource, resolve_model_source
from gemma_chat.infrastructure.llm.precision import PrecisionPlan, check_attention, plan_precision
from gemma_chat.infrastructure.llm.stop_sequences import StopSequenceFilter
from gemma_chat.shared.config import Settings
from gemma_chat.shared.exceptions import GemmaChatError, ModelNotLoadedError, OutOfMemoryError

__all__ = ["GemmaLLM"]

logger = logging.getLogger(__name__)

Emit = Callable[[StreamChunk | BaseException], None]


class GemmaLLM(BaseLLM):
    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__(settings)
        # One thread per model: requests queue here instead of contending for the weights.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gemma-llm")
        self._model: Any = None
        self._tokenizer: Any = None
        self._forward: Forward | None = None  # model.forward, or its torch.compile'd form
        self._plan: PrecisionPlan | None = None
        self._source: ModelSource | None = None
        self._end_ids: frozenset[int] = frozenset()
        self._chat_format: ChatFormat | None = None  # None: the tokenizer's chat template
        self.load_seconds: float | None = None

    # -- loading -------------------------------------------------------------------------------

    async def _load_model_implementation(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load_blocking)

    def _load_blocking(self) -> None:
        started = time.perf_counter()
        settings = self.settings
        plan = plan_precision(settings.model, settings.performance)
        attention = check_attention(settings.model.attn_implementation, plan.device)
        source = resolve_model_source(settings.model.name, settings.model.revision)
        if settings.performance.num_threads:
            torch.set_num_threads(settings.performance.num_threads)

        from transformers import AutoModelForCausalLM, AutoTokenizer

        common: dict[str, Any] = {
            "local_files_only": True,
            "trust_remote_code": settings.model.trust_remote_code,
        }
        if source.gguf_file:
            common["gguf_file"] = source.gguf_file
        if settings.model.revision:
            common["revision"] = settings.model.revision
        tokenizer: Any = AutoTokenizer.from_pretrained(source.directory, **common)
        model_kwargs: dict[str, Any] = {"dtype": plan.dtype}
        if attention:
            model_kwargs["attn_implementation"] = attention
        if plan.bnb_config is not None:
            model_kwargs["quantization_config"] = plan.bnb_config
            model_kwargs["device_map"] = {"": 0}
        model: Any = AutoModelForCausalLM.from_pretrained(
            source.directory, **common, **model_kwargs
        )
        if plan.bnb_config is None:
            model.to(plan.device)
        model.eval()
        if plan.cpu_dynamic_int8:
            model = _quantize_dynamic_int8(model)

        self._chat_format = choose_chat_format(
            settings.model.chat_format,
            has_template=bool(getattr(tokenizer, "chat_template", None)),
            model_name=f"{settings.model.name} {source.gguf_file or ''}",
        )
        self._tokenizer, self._model, self._plan, self._source = tokenizer, model, plan, source
        self._end_ids = _end_of_turn_ids(tokenizer, model)
        self._forward = (
            torch.compile(model.forward, dynamic=True)
            if settings.performance.compile
            else model.forward
        )
        self.load_seconds = time.perf_counter() - started
        logger.info("Loaded %s in %.1f s (%s)", self.model_name, self.load_seconds, plan.describe())

    async def _unload_model_implementation(self) -> None:
        def release() -> None:
            self._model = self._tokenizer = self._forward = None
            gc.collect()
            if self._plan is not None and self._plan.device == "cuda":
                torch.cuda.empty_cache()

        await asyncio.get_running_loop().run_in_executor(self._executor, release)

    # -- formats and sizes ---------------------------------------------------------------------

    def format_prompt(self, messages: Sequence[ChatMessage]) -> str:
        tokenizer = self._require_tokenizer()
        if self._chat_format is None:
            prompt: str = tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=True
            )
            return prompt
        return self._chat_format.render(messages, tokenizer.bos_token or "")

    def count_tokens(self, text: str) -> int:
        return len(self._encode(text))

    @property
    def context_length(self) -> int | None:
        configured = self.settings.model.context_length
        if configured is not None or self._model is None:
            return configured
        limit = getattr(self._model.config, "max_position_embeddings", None)
        return int(limit) if limit else None

    def _extra_model_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "device": self.settings.performance.device,
            "dtype": self.settings.model.dtype,
            "quantization": self.settings.model.quantization,
            "compiled": self.settings.performance.compile,
            "chat_format": self._chat_format.name if self._chat_format else "template",
        }
        if self._plan is not None:
            info.update(self._plan.describe())
        if self._source is not None:
            info["source"] = str(self._source.gguf_path or self._source.directory)
        if self._model is not None:
            info["parameters"] = sum(p.numel() for p in self._model.parameters())
            info["attn_implementation"] = getattr(self._model.config, "_attn_implementation", None)
        if self.load_seconds is not None:
            info["load_seconds"] = round(self.load_seconds, 2)
        return info

    def map_error(self, exc: Exception) -> GemmaChatError:
        if isinstance(exc, torch.OutOfMemoryError):
            return OutOfMemoryError(str(exc).splitlines()[0] if str(exc) else "")
        return super().map_error(exc)

    # -- generation ----------------------------------------------------------------------------

    async def _generate_implementation(self, prompt: str, **kwargs: Any) -> Completion:
        parts: list[str] = []
        async for chunk in self._stream_implementation(prompt, **kwargs):
            parts.append(chunk.text)
            if chunk.finish_reason is not None:
                usage = chunk.token_usage or TokenUsage()
                return Completion("".join(parts), chunk.finish_reason, usage)
        raise RuntimeError("the generation ended without a final chunk")  # pragma: no cover

    async def _stream_implementation(
        self, prompt: str, **kwargs: Any
    ) -> AsyncGenerator[StreamChunk, None]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[StreamChunk | BaseException] = asyncio.Queue()
        cancel = threading.Event()

        def emit(item: StreamChunk | BaseException) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone: nobody is listening any more
                cancel.set()

        future = loop.run_in_executor(
            self._executor, self._generate_blocking, prompt, kwargs, cancel, emit
        )
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            # The consumer stopped (finished, broke off or was cancelled): stop the token loop.
            cancel.set()
            future.add_done_callback(_retrieve)

    def _generate_blocking(
        self, prompt: str, kwargs: dict[str, Any], cancel: threading.Event, emit: Emit
    ) -> None:
        if cancel.is_set():  # cancelled while it waited for the worker thread
            return
        try:
            model, tokenizer, forward = self._require_model()
            plan = self._plan
            assert plan is not None
            from transformers import DynamicCache

            with torch.inference_mode():
                input_ids = self._encode_tensor(prompt).to(model.device)  # [1, S]
                sampler = TokenSampler(
                    SamplingParams(
                        temperature=kwargs["temperature"],
                        top_p=kwargs["top_p"],
                        top_k=kwargs["top_k"],
                        repetition_penalty=kwargs["repetition_penalty"],
                        seed=kwargs["seed"],
                    ),
                    device=model.device,
                )
                detokenizer = IncrementalDetokenizer(
                    lambda ids: tokenizer.decode(ids, skip_special_tokens=True)
                )
                chat_format = self._chat_format
                stops = StopSequenceFilter(
                    (*kwargs["stop"], *(chat_format.stop if chat_format else ()))
                )
                # Whitespace before the first character of the answer is the format's, not the
                # answer's ("Assistant: Paris").
                leading = chat_format is not None and chat_format.strip_leading_space
                finish = FinishReason.LENGTH
                generated = 0
                tokens = generate_tokens(
                    forward,
                    input_ids,
                    DynamicCache(config=model.config),
                    sampler,
                    kwargs["max_new_tokens"],
                )
                for token in tokens:
                    if token in self._end_ids:
                        finish = FinishReason.STOP
                        break
                    generated += 1
                    delta = detokenizer.push(token)
                    if leading:
                        delta = delta.lstrip()
                        leading = not delta
                    released = stops.push(delta)
                    if released:
                        emit(StreamChunk(released))
                    if stops.stopped:
                        finish = FinishReason.STOP
                        break
                    if cancel.is_set():
                        finish = FinishReason.CANCELLED
                        break
                last = detokenizer.flush()
                tail = stops.push(last.lstrip() if leading else last) + stops.flush()
                usage = TokenUsage(int(input_ids.shape[1]), generated)
                emit(StreamChunk(tail, finish, usage))
        except BaseException as exc:
            emit(exc)
        finally:
            if (
                self._plan is not None
                and self._plan.device == "cuda"
                and self.settings.performance.empty_cache_after_inference
            ):
                torch.cuda.empty_cache()

    # -- helpers -------------------------------------------------------------------------------

    def _require_tokenizer(self) -> Any:
        if self._tokenizer is None:
            raise ModelNotLoadedError(
                f"Model {self.model_name!r} is not loaded: call `await llm.load()` first."
            )
        return self._tokenizer

    def _require_model(self) -> tuple[Any, Any, Forward]:
        tokenizer = self._require_tokenizer()
        if self._model is None or self._forward is None:  # pragma: no cover - set together
            raise ModelNotLoadedError(f"Model {self.model_name!r} is not loaded.")
        return self._model, tokenizer, self._forward

    def _encode(self, text: str) -> list[int]:
        ids: list[int] = self._require_tokenizer()(text, add_special_tokens=False).input_ids
        return ids

    def _encode_tensor(self, text: str) -> torch.Tensor:
        return torch.tensor([self._encode(text)], dtype=torch.long)  # [1, S]


def _end_of_turn_ids(tokenizer: Any, model: Any) -> frozenset[int]:
    ids: set[int] = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if isinstance(end_of_turn, int) and end_of_turn != tokenizer.unk_token_id:
        ids.add(end_of_turn)
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


def _retrieve(future: Future[None] | asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # errors were delivered through the queue; mark them seen
