"""``GemmaLLM``: Gemma (and other causal LMs) on torch, on CPU or CUDA.

Loads the embedded Gemma 3 270M GGUF by default, a local directory or .gguf file, or a hub id
already in the local cache. Gemma 3 and Gemma 4 text models on CPU run on the native engine
(lean model, continuous batching, KV reuse between turns, converted weights cached on disk);
everything else runs through transformers. Model work happens on a worker thread, so the event
loop stays free; the generators check for cancellation at every step.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from gemma_chat.domain.errors import (
    ConfigurationError,
    ModelNotLoadedError,
)
from gemma_chat.domain.models import ChatMessage, Completion, StreamChunk
from gemma_chat.infrastructure.llm.adapters.base import BaseLLM
from gemma_chat.infrastructure.llm.generation.chat_format import ChatFormat, choose_chat_format
from gemma_chat.infrastructure.llm.generation.constraints import GrammarCompiler, TokenConstraint
from gemma_chat.infrastructure.llm.generation.handoff import LoopHandoff
from gemma_chat.infrastructure.llm.generation.job import GenerationJob
from gemma_chat.infrastructure.llm.generation.sampling import SamplingParams
from gemma_chat.infrastructure.llm.generation.token_generator import TokenGenerator
from gemma_chat.infrastructure.llm.loading.model_source import ModelSource, resolve_model_source
from gemma_chat.infrastructure.llm.loading.precision import (
    PrecisionPlan,
    check_attention,
    plan_precision,
)
from gemma_chat.shared.config import Settings

__all__ = ["GemmaLLM"]

logger = logging.getLogger(__name__)


class GemmaLLM(BaseLLM):
    supports_logprobs = True  # both generators score each token (GenerationJob.score)

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__(settings)
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gemma-load")
        self._generator: TokenGenerator | None = None
        self._plan: PrecisionPlan | None = None
        self._source: ModelSource | None = None
        self._chat_format: ChatFormat | None = None  # None: the tokenizer's chat template
        self._control_tokens: re.Pattern[str] | None = None
        self._last_encoded: tuple[str, list[int]] | None = None
        self._grammars: GrammarCompiler | None = None  # built at the first constrained request
        # Chunks from the generator's thread to each event loop's streams, one wake-up of the
        # loop per batch of them (a decode step's), not one per chunk.
        self._handoffs: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, LoopHandoff[StreamChunk | BaseException]
        ] = weakref.WeakKeyDictionary()
        self.load_seconds: float | None = None
        self._engine_note: str | None = None  # why the native engine does not run the model

    # -- loading -------------------------------------------------------------------------------

    async def _load_model_implementation(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._loader, self._load_blocking)

    def _load_blocking(self) -> None:
        started = time.perf_counter()
        settings = self.settings
        plan = plan_precision(settings.model, settings.performance)
        attention = check_attention(settings.model.attn_implementation, plan.device)
        source = resolve_model_source(settings.model.name, settings.model.revision)
        if settings.performance.num_threads:
            torch.set_num_threads(settings.performance.num_threads)
        generator: TokenGenerator
        use_engine = self._use_engine(plan, source)
        if plan.device == "cpu" and plan.quantization == "int4" and not use_engine:
            raise ConfigurationError(
                "GEMMA_MODEL__QUANTIZATION=int4 on CPU needs the native engine (Gemma 3 and 4 "
                "text models, GEMMA_PERFORMANCE__ENGINE=auto or native): the transformers engine "
                "has no 4-bit CPU kernels (bitsandbytes 4-bit needs CUDA). Use int8 or bf16, or a "
                "CUDA device."
            )
        if use_engine:
            from gemma_chat.infrastructure.llm.engine.generator import NativeGenerator

            generator = NativeGenerator(settings, source, plan)
        else:
            from gemma_chat.infrastructure.llm.generation.transformers_generator import (
                TransformersGenerator,
            )

            generator = TransformersGenerator(settings, plan, source, attention)
        self._chat_format = choose_chat_format(
            settings.model.chat_format,
            has_template=bool(generator.tokenizer.chat_template),
            model_name=f"{settings.model.name} {source.gguf_file or ''}",
        )
        self._control_tokens = None  # for this tokenizer, compiled on first need
        self._last_encoded = None
        self._grammars = None
        self._generator, self._plan, self._source = generator, plan, source
        self.load_seconds = time.perf_counter() - started
        logger.info("Loaded %s in %.1f s (%s)", self.model_name, self.load_seconds, plan.describe())

    def _use_engine(self, plan: PrecisionPlan, source: ModelSource) -> bool:
        from gemma_chat.infrastructure.llm.engine.generator import refusal

        choice = self.settings.performance.engine
        self._engine_note = None
        if choice == "transformers":
            return False
        reasons = []
        if plan.device != "cpu":
            reasons.append("it runs on CPU only")
        if plan.quantization not in ("none", "auto", "int8", "int4"):
            reasons.append(f"it has no {plan.quantization} quantization")
        if self.settings.performance.compile:
            reasons.append("torch.compile applies to the transformers engine")
        if self.settings.model.attn_implementation not in ("auto", "sdpa"):
            reasons.append("it uses sdpa attention")
        if not reasons and (why := refusal(source)) is not None:
            reasons.append(why)
        if reasons and choice == "native":
            raise ConfigurationError(
                "GEMMA_PERFORMANCE__ENGINE=native cannot serve this model: "
                + "; ".join(reasons)
                + ". Use GEMMA_PERFORMANCE__ENGINE=auto or transformers."
            )
        if reasons:  # said once, here and in get_model_info()
            self._engine_note = (
                "The native engine cannot run this model ("
                + "; ".join(reasons)
                + "): it runs on the transformers engine instead (one request at a time)."
            )
            logger.warning("%s: %s", self.model_name, self._engine_note)
        return not reasons

    async def _unload_model_implementation(self) -> None:
        generator, self._generator = self._generator, None
        if generator is not None:
            await asyncio.get_running_loop().run_in_executor(self._loader, generator.close)

    # -- formats and sizes ---------------------------------------------------------------------

    def _require_generator(self) -> TokenGenerator:
        if self._generator is None:
            raise ModelNotLoadedError(
                f"Model {self.model_name!r} is not loaded: call `await llm.load()` first."
            )
        return self._generator

    def format_prompt(self, messages: Sequence[ChatMessage]) -> str:
        tokenizer = self._require_generator().tokenizer
        # Text that spells a control token ("<start_of_turn>", "<bos>") must stay text: a
        # zero-width space after its "<" keeps the tokenizer from reading it as the token.
        safe: list[ChatMessage] = [
            {"role": m["role"], "content": self._defuse(m["content"])} for m in messages
        ]
        if self._chat_format is None:
            return tokenizer.render_chat(safe)
        return self._chat_format.render(safe, tokenizer.bos_token or "")

    def _defuse(self, text: str) -> str:
        if "<" not in text:
            return text
        if self._control_tokens is None:  # compiled on first need: Gemma has thousands
            specials = sorted(
                (
                    t
                    for t in self._require_generator().tokenizer.special_tokens
                    if t.startswith("<")
                ),
                key=len,
                reverse=True,
            )
            self._control_tokens = re.compile("|".join(map(re.escape, specials)) or "(?!)")
        return self._control_tokens.sub(lambda m: "<\u200b" + m.group()[1:], text)

    def count_tokens(self, text: str) -> int:
        return len(self._encode(text))

    def _encode(self, text: str) -> list[int]:
        """Token ids of ``text``; the last prompt is remembered, since BaseLLM counts a prompt's
        tokens (context check) just before it is generated from."""
        last = self._last_encoded
        if last is not None and last[0] == text:
            return last[1]
        ids = self._require_generator().tokenizer.encode(text)
        self._last_encoded = (text, ids)
        return ids

    @property
    def context_length(self) -> int | None:
        configured = self.settings.model.context_length
        if configured is not None or self._generator is None:
            return configured
        return self._generator.context_length

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
        if self._generator is not None:
            info.update(self._generator.info())
        if self._engine_note is not None:
            info["engine_note"] = self._engine_note
        if self.load_seconds is not None:
            info["load_seconds"] = round(self.load_seconds, 2)
        return info

    # -- generation ----------------------------------------------------------------------------

    async def _generate_implementation(self, prompt: str, **kwargs: Any) -> Completion:
        return await self._completion_from_stream(prompt, **kwargs)

    def _grammar_compiler(self) -> GrammarCompiler:
        if self._grammars is None:
            generator = self._require_generator()
            self._grammars = GrammarCompiler(
                generator.tokenizer, generator.vocab_size, generator.end_ids
            )
        return self._grammars

    async def _constraint(self, kwargs: dict[str, Any]) -> TokenConstraint | None:
        """The answer's grammar state, when the request has a response format (compiled off
        the event loop: the first one also reads the vocabulary)."""
        response_format = kwargs.get("response_format")
        if response_format is None:
            return None
        compiler = self._grammar_compiler()
        return await asyncio.get_running_loop().run_in_executor(
            None, compiler.constraint, response_format
        )

    def _handoff(self, loop: asyncio.AbstractEventLoop) -> LoopHandoff[StreamChunk | BaseException]:
        handoff = self._handoffs.get(loop)
        if handoff is None:
            handoff = self._handoffs[loop] = LoopHandoff(loop)
        return handoff

    async def _stream_implementation(
        self, prompt: str, **kwargs: Any
    ) -> AsyncIterator[StreamChunk]:
        generator = self._require_generator()
        constraint = await self._constraint(kwargs)
        handoff = self._handoff(asyncio.get_running_loop())
        queue: asyncio.Queue[StreamChunk | BaseException] = asyncio.Queue()
        # A raw completion continues the prompt as it is: no chat format, no turn markers.
        chat_format = None if kwargs.get("raw") else self._chat_format

        def emit(item: StreamChunk | BaseException) -> None:
            try:
                handoff.put(queue, item)
            except RuntimeError:  # the event loop is gone: nobody is listening any more
                job.cancel.set()

        job = GenerationJob(
            prompt_ids=list(self._encode(prompt)),
            sampling=SamplingParams(
                temperature=kwargs["temperature"],
                top_p=kwargs["top_p"],
                top_k=kwargs["top_k"],
                repetition_penalty=kwargs["repetition_penalty"],
                seed=kwargs["seed"],
            ),
            max_new_tokens=kwargs["max_new_tokens"],
            stop=(*kwargs["stop"], *(chat_format.stop if chat_format else ())),
            end_ids=generator.end_ids,
            decode=generator.tokenizer.decode,
            emit=emit,
            strip_leading_space=chat_format is not None and chat_format.strip_leading_space,
            constraint=constraint,
            logprobs=kwargs.get("logprobs"),
        )
        generator.submit(job)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            # The consumer stopped (finished, broke off or was cancelled): free the slot.
            job.cancel.set()
            generator.wake()
