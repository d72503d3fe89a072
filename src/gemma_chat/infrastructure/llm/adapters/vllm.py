"""``VLLMLLM``: vLLM's async engine in this process, on CUDA GPUs.

For a machine with one or more NVIDIA GPUs, without running a separate server: vLLM batches
concurrent requests (PagedAttention, continuous batching) and splits a model across GPUs
(``GEMMA_VLLM__TENSOR_PARALLEL_SIZE``, ``GEMMA_VLLM__PIPELINE_PARALLEL_SIZE``). vLLM is the
optional extra ``pip install 'gemma-chat[vllm]'`` and is imported on ``load()`` only.

The conversation is formatted with the tokenizer's chat template (or ``GEMMA_MODEL__CHAT_FORMAT``)
and tokenized here, so the context check counts exact tokens; the answer streams from vLLM's
request generator, and a consumer that stops reading aborts the request.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from gemma_chat.domain.errors import (
    ConfigurationError,
    GemmaChatError,
    ModelNotLoadedError,
)
from gemma_chat.domain.models import (
    ChatMessage,
    Completion,
    FinishReason,
    ResponseFormat,
    ResponseFormatKind,
    StreamChunk,
    TokenUsage,
)
from gemma_chat.infrastructure.llm.adapters.base import BaseLLM
from gemma_chat.infrastructure.llm.generation.chat_format import ChatFormat, choose_chat_format
from gemma_chat.shared.config import Settings

__all__ = ["PREFIX", "VLLMLLM", "cuda_available", "sampling_arguments"]

logger = logging.getLogger(__name__)

PREFIX = "vllm:"


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def sampling_arguments(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Our generation parameters as ``vllm.SamplingParams`` arguments (same meanings: 0 turns
    top_k off, 1 turns repetition_penalty off, temperature 0 is greedy)."""
    return {
        "temperature": kwargs["temperature"],
        "top_p": kwargs["top_p"],
        "top_k": kwargs["top_k"],
        "max_tokens": kwargs["max_new_tokens"],
        "stop": list(kwargs["stop"]),
        "seed": kwargs["seed"],
        "repetition_penalty": kwargs["repetition_penalty"],
    }


def structured_arguments(vllm: Any, fmt: ResponseFormat) -> dict[str, Any]:
    """The answer's grammar as vLLM's structured-output parameters (``structured_outputs``
    since vLLM 0.11; ``guided_decoding`` before): xgrammar's EBNF, as ours, for a grammar."""
    kind = fmt.kind
    fields: dict[str, Any]
    if kind is ResponseFormatKind.JSON_SCHEMA:
        fields = {"json": dict(fmt.schema or {})}
    elif kind is ResponseFormatKind.JSON_OBJECT:
        fields = {"json_object": True}
    elif kind is ResponseFormatKind.REGEX:
        fields = {"regex": fmt.pattern}
    elif kind is ResponseFormatKind.CHOICE:
        fields = {"choice": list(fmt.choices)}
    else:
        fields = {"grammar": fmt.grammar}
    params = vllm.sampling_params
    if hasattr(params, "StructuredOutputsParams"):
        return {"structured_outputs": params.StructuredOutputsParams(**fields)}
    return {"guided_decoding": params.GuidedDecodingParams(**fields)}


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise ConfigurationError(
            f"VLLMLLM needs vLLM, which is not installed ({exc}): pip install "
            "'gemma-chat[vllm]' on a Linux machine with a CUDA GPU. Without a GPU here, run vLLM "
            "on one and set GEMMA_REMOTE__BASE_URL to it instead."
        ) from exc
    return vllm


class VLLMLLM(BaseLLM):
    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__(settings)
        name = self.settings.model.name
        self.vllm_model = name[len(PREFIX) :] if name.lower().startswith(PREFIX) else name
        if not self.vllm_model.strip():
            raise ConfigurationError(
                f"GEMMA_MODEL__NAME={name!r} names no model: use vllm:<hub id or local path>."
            )
        self._vllm: Any = None
        self._engine: Any = None
        self._tokenizer: Any = None
        self._chat_format: ChatFormat | None = None  # None: the tokenizer's chat template
        self._last_encoded: tuple[str, bool, list[int]] | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def engine_arguments(self) -> dict[str, Any]:
        """``vllm.AsyncEngineArgs`` from the settings."""
        model, parallel = self.settings.model, self.settings.vllm
        arguments: dict[str, Any] = {
            "model": self.vllm_model,
            "tensor_parallel_size": parallel.tensor_parallel_size,
            "pipeline_parallel_size": parallel.pipeline_parallel_size,
            "gpu_memory_utilization": parallel.gpu_memory_utilization,
            "dtype": model.dtype,
            "trust_remote_code": model.trust_remote_code,
        }
        if model.revision is not None:
            arguments["revision"] = model.revision
        if model.context_length is not None:
            arguments["max_model_len"] = model.context_length
        if parallel.quantization is not None:
            arguments["quantization"] = parallel.quantization
        return arguments

    async def _load_model_implementation(self) -> None:
        if not cuda_available():
            raise ConfigurationError(
                "VLLMLLM runs on CUDA GPUs, and torch sees none on this machine "
                "(torch.cuda.is_available() is False). Use the default engine here, or run vLLM "
                "on a GPU machine and set GEMMA_REMOTE__BASE_URL to it."
            )
        vllm = _import_vllm()
        arguments = vllm.AsyncEngineArgs(**self.engine_arguments())
        # Building the engine loads the weights (minutes): off the event loop. vLLM starts its
        # output handler on the first request, in the loop that makes it.
        engine = await asyncio.to_thread(vllm.AsyncLLMEngine.from_engine_args, arguments)
        tokenizer = engine.get_tokenizer()
        if inspect.isawaitable(tokenizer):  # a coroutine in older vLLM releases
            tokenizer = await tokenizer
        self._chat_format = choose_chat_format(
            self.settings.model.chat_format,
            has_template=bool(getattr(tokenizer, "chat_template", None)),
            model_name=self.vllm_model,
        )
        self._vllm, self._engine, self._tokenizer = vllm, engine, tokenizer
        self._last_encoded = None

    async def _unload_model_implementation(self) -> None:
        engine, self._engine = self._engine, None
        self._tokenizer = None
        shutdown = getattr(engine, "shutdown", None)
        if shutdown is not None:
            await asyncio.to_thread(shutdown)

    async def check_health(self) -> None:
        """vLLM's own check: raises when its engine process has died."""
        try:
            await self._require_engine().check_health()
        except GemmaChatError:
            raise
        except Exception as exc:
            raise self.map_error(exc) from exc

    def _require_engine(self) -> Any:
        if self._engine is None:
            raise ModelNotLoadedError(
                f"Model {self.model_name!r} is not loaded: call `await llm.load()` first."
            )
        return self._engine

    # -- formats and sizes -----------------------------------------------------------------------

    def format_prompt(self, messages: Sequence[ChatMessage]) -> str:
        self._require_engine()
        if self._chat_format is None:
            prompt: str = self._tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=True
            )
            return prompt
        return self._chat_format.render(messages, getattr(self._tokenizer, "bos_token", "") or "")

    def count_tokens(self, text: str) -> int:
        return len(self._encode(text, special=False))

    def _encode(self, text: str, *, special: bool) -> list[int]:
        """Token ids of ``text``; the last ones are remembered, since BaseLLM counts a prompt's
        tokens just before it is generated from. ``special``: add BOS as a raw prompt needs
        (a formatted chat prompt has its own)."""
        last = self._last_encoded
        if last is not None and last[:2] == (text, special):
            return last[2]
        self._require_engine()
        ids: list[int] = list(self._tokenizer.encode(text, add_special_tokens=special))
        self._last_encoded = (text, special, ids)
        return ids

    @property
    def context_length(self) -> int | None:
        configured = self.settings.model.context_length
        if configured is not None or self._engine is None:
            return configured
        model_config = getattr(self._engine, "model_config", None)
        limit = getattr(model_config, "max_model_len", None)
        return limit if isinstance(limit, int) else None

    def _extra_model_info(self) -> dict[str, Any]:
        parallel = self.settings.vllm
        return {
            "backend": "vllm",
            "vllm_model": self.vllm_model,
            "vllm_version": getattr(self._vllm, "__version__", None),
            "tensor_parallel_size": parallel.tensor_parallel_size,
            "pipeline_parallel_size": parallel.pipeline_parallel_size,
            "chat_format": self._chat_format.name if self._chat_format else "template",
        }

    # -- generation ------------------------------------------------------------------------------

    async def _generate_implementation(self, prompt: str, **kwargs: Any) -> Completion:
        return await self._completion_from_stream(prompt, **kwargs)

    async def _stream_implementation(
        self, prompt: str, **kwargs: Any
    ) -> AsyncIterator[StreamChunk]:
        engine = self._require_engine()
        # A chat prompt is the template's output, BOS included; a raw prompt gets one here.
        ids = self._encode(prompt, special=bool(kwargs.get("raw")))
        arguments = sampling_arguments(kwargs)
        if kwargs.get("response_format") is not None:
            arguments |= structured_arguments(self._vllm, kwargs["response_format"])
        parameters = self._vllm.SamplingParams(**arguments)
        request_id = uuid.uuid4().hex
        outputs = engine.generate({"prompt_token_ids": ids}, parameters, request_id)
        sent = 0
        finished = False
        try:
            async for output in outputs:
                result = output.outputs[0]
                text: str = result.text  # the whole answer so far
                if len(text) > sent:
                    yield StreamChunk(text[sent:])
                    sent = len(text)
                if output.finished:
                    finished = True
                    reason = FinishReason.LENGTH if result.finish_reason == "length" else None
                    usage = TokenUsage(len(ids), len(result.token_ids))
                    yield StreamChunk("", reason or FinishReason.STOP, usage)
                    return
        finally:
            await outputs.aclose()
            if not finished:
                # The reader stopped early: free the request's GPU slot now (a no-op for a
                # request vLLM has finished or aborted itself).
                await engine.abort(request_id)
