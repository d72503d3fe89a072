"""``BaseLLM``: the template every local or remote model adapter builds on.

A subclass writes ``_load_model_implementation`` and ``_generate_implementation`` (and may write
``_stream_implementation``); ``BaseLLM`` supplies the rest of ``LLMProtocol``: an idempotent,
concurrency-safe load, prompt formatting, the context-window check, stop sequences, counters,
memory figures and the mapping of backend failures onto gemma-chat errors.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import weakref
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from enum import StrEnum
from typing import Any, ClassVar

import psutil

from gemma_chat.domain.errors import (
    ContextLengthExceededError,
    GemmaChatError,
    InferenceError,
    InvalidGenerationConfigError,
    ModelLoadError,
    ModelNotLoadedError,
    OutOfMemoryError,
)
from gemma_chat.domain.models import (
    ChatMessage,
    Completion,
    FinishReason,
    GenerationConfig,
    Role,
    StreamChunk,
    TokenLogprob,
    TokenUsage,
    ToolCall,
    ToolChoiceMode,
)
from gemma_chat.domain.models.message import validate_content
from gemma_chat.infrastructure.llm.adapters.conversation import fit_to_context, validated_messages
from gemma_chat.infrastructure.llm.generation.stop_sequences import StopSequenceFilter, cut_at_stop
from gemma_chat.infrastructure.llm.generation.tool_prompt import (
    ToolCallFilter,
    parse_tool_calls,
    render_tool_conversation,
    tool_grammar,
)
from gemma_chat.shared.config import Settings, get_settings

__all__ = ["BaseLLM", "LLMState"]

logger = logging.getLogger(__name__)

_WORDS = re.compile(r"\w+|[^\w\s]")


class LLMState(StrEnum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"


class BaseLLM(ABC):
    """Template for ``LLMProtocol`` adapters.

    Subclasses receive the formatted prompt and the generation parameters as keyword arguments
    (``temperature``, ``top_p``, ``top_k``, ``max_new_tokens``, ``stop``, ``seed``,
    ``repetition_penalty``) and return the text, or a ``Completion`` with exact token counts.

    Structured output and tools: a request with a response format or tools adds
    ``response_format`` (a ``ResponseFormat``: the grammar the answer must follow, tools
    included) to the keyword arguments; an adapter that can constrain decoding applies it, one
    that cannot ignores it. Tools are prompted (``generation/tool_prompt.py``: described in the
    system turn, calls and results as fenced blocks) and the calls parsed back from the answer,
    unless the adapter sets ``native_tools``: it then receives ``tools`` and ``tool_choice``
    too, and the messages with their tool calls, and returns the calls in its ``Completion``.

    Log probabilities: an adapter that sets ``supports_logprobs`` receives ``logprobs`` (the
    alternatives per token) when a request asks for them, and returns each token's entry in
    its ``StreamChunk``s or ``Completion``; a request for them to any other adapter is refused.
    """

    # An adapter of a chat API (a remote server formats the prompt itself) sets this to receive
    # the conversation as ``messages`` among the keyword arguments of a chat request: the
    # validated messages, after any history truncation.
    takes_messages: ClassVar[bool] = False
    # An adapter of a backend with its own tool calling (an OpenAI-compatible server) sets
    # this: tools and the messages' tool calls go to it as they are.
    native_tools: ClassVar[bool] = False
    # An adapter that returns each token's log probability sets this.
    supports_logprobs: ClassVar[bool] = False

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else get_settings()
        self.inference_count = 0
        self.total_tokens_generated = 0
        self._state = LLMState.UNLOADED
        # One lock per event loop: an asyncio.Lock must not be shared between loops.
        self._load_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_name={self.model_name!r}, state={self._state.value!r})"

    # -- what subclasses write -----------------------------------------------------------------

    @abstractmethod
    async def _load_model_implementation(self) -> None:
        """Load the weights; blocking work belongs in a thread (``asyncio.to_thread``)."""

    @abstractmethod
    async def _generate_implementation(self, prompt: str, **kwargs: Any) -> str | Completion:
        """Answer ``prompt``; blocking work belongs in a thread."""

    async def _stream_implementation(
        self, prompt: str, **kwargs: Any
    ) -> AsyncIterator[str | StreamChunk]:
        """Yield the answer in pieces; by default the whole answer in one piece."""
        result = await self._generate_implementation(prompt, **kwargs)
        if isinstance(result, Completion):
            yield StreamChunk(
                result.text, result.finish_reason, result.token_usage, logprobs=result.logprobs
            )
        else:
            yield result

    async def _unload_model_implementation(self) -> None:  # noqa: B027 - optional hook
        """Release the weights; the default has nothing to release."""

    def format_prompt(self, messages: Sequence[ChatMessage]) -> str:
        """The conversation as one prompt string; adapters with a chat format override this."""
        lines = [f"{m['role']}: {m['content']}" for m in messages]
        return "\n".join([*lines, f"{Role.ASSISTANT.value}:"])

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text``: an estimate (words and punctuation) unless the adapter knows."""
        return len(_WORDS.findall(text))

    @property
    def context_length(self) -> int | None:
        """Tokens the model attends to (prompt plus answer); None when unknown or unlimited."""
        return self.settings.model.context_length

    async def _completion_from_stream(self, prompt: str, **kwargs: Any) -> Completion:
        """``_generate_implementation`` for adapters whose natural form is the stream (they write
        ``_stream_implementation``): its pieces joined, with the final chunk's finish reason and
        usage."""
        parts: list[str] = []
        logprobs: list[TokenLogprob] = []
        async for chunk in self._stream_implementation(prompt, **kwargs):
            text = chunk.text if isinstance(chunk, StreamChunk) else chunk
            parts.append(text)
            if isinstance(chunk, StreamChunk):
                logprobs += chunk.logprobs
            if isinstance(chunk, StreamChunk) and chunk.finish_reason is not None:
                return Completion(
                    "".join(parts),
                    chunk.finish_reason,
                    chunk.token_usage or TokenUsage(),
                    logprobs=tuple(logprobs),
                )
        raise InferenceError(f"{type(self).__name__}'s stream ended without a final chunk")

    def map_error(self, exc: Exception) -> GemmaChatError:
        """Turn a backend failure into a gemma-chat error; adapters add their own cases."""
        torch = sys.modules.get("torch")  # only when loaded: adapters without torch need none
        if torch is not None and isinstance(exc, torch.OutOfMemoryError):
            return OutOfMemoryError(str(exc).splitlines()[0] if str(exc) else "")
        return InferenceError(
            f"{type(self).__name__} failed while generating with {self.model_name!r}: "
            f"{type(exc).__name__}: {exc}"
        )

    def _extra_model_info(self) -> dict[str, Any]:
        return {}

    # -- LLMProtocol ---------------------------------------------------------------------------

    @property
    def model_name(self) -> str:
        return self.settings.model.name

    @property
    def is_loaded(self) -> bool:
        return self._state is LLMState.LOADED

    @property
    def state(self) -> LLMState:
        return self._state

    async def load(self) -> None:
        """Load the model once; concurrent callers wait for the same load."""
        loop = asyncio.get_running_loop()
        lock = self._load_locks.setdefault(loop, asyncio.Lock())
        async with lock:
            if self._state is LLMState.LOADED:
                return
            self._state = LLMState.LOADING
            logger.info("Loading model %s with %s", self.model_name, type(self).__name__)
            try:
                await self._load_model_implementation()
            except GemmaChatError:
                self._state = LLMState.UNLOADED
                raise
            except Exception as exc:
                self._state = LLMState.UNLOADED
                raise ModelLoadError(
                    f"Could not load model {self.model_name!r}: {type(exc).__name__}: {exc}"
                ) from exc
            except BaseException:
                self._state = LLMState.UNLOADED
                raise
            self._state = LLMState.LOADED

    async def unload(self) -> None:
        if self._state is LLMState.UNLOADED:
            return
        await self._unload_model_implementation()
        self._state = LLMState.UNLOADED

    async def generate(
        self, messages: Sequence[ChatMessage], config: GenerationConfig
    ) -> Completion:
        prompt, prompt_tokens, chat = self._prepare(messages, config)
        return await self._generate_prompt(prompt, prompt_tokens, config, raw=False, chat=chat)

    async def stream(
        self, messages: Sequence[ChatMessage], config: GenerationConfig
    ) -> AsyncIterator[StreamChunk]:
        prompt, prompt_tokens, chat = self._prepare(messages, config)
        # aclosing: a consumer that stops early closes the inner stream now, which stops the
        # generation, instead of whenever the garbage collector gets to it.
        inner_stream = self._stream_prompt(prompt, prompt_tokens, config, raw=False, chat=chat)
        async with aclosing(inner_stream) as inner:
            async for chunk in inner:
                yield chunk

    async def complete(self, prompt: str, config: GenerationConfig) -> Completion:
        """Continue ``prompt`` as it is, without a chat format (OpenAI's /v1/completions)."""
        prompt_tokens = self._prepare_raw(prompt, config)
        return await self._generate_prompt(prompt, prompt_tokens, config, raw=True)

    async def stream_completion(
        self, prompt: str, config: GenerationConfig
    ) -> AsyncIterator[StreamChunk]:
        prompt_tokens = self._prepare_raw(prompt, config)
        async with aclosing(self._stream_prompt(prompt, prompt_tokens, config, raw=True)) as inner:
            async for chunk in inner:
                yield chunk

    async def _generate_prompt(
        self,
        prompt: str,
        prompt_tokens: int,
        config: GenerationConfig,
        *,
        raw: bool,
        chat: list[ChatMessage] | None = None,
    ) -> Completion:
        try:
            result = await self._generate_implementation(prompt, **self._kwargs(config, raw, chat))
        except GemmaChatError:
            raise
        except Exception as exc:
            raise self.map_error(exc) from exc
        if not isinstance(result, str | Completion):
            raise InferenceError(
                f"{type(self).__name__}._generate_implementation returned "
                f"{type(result).__name__}: it must return the answer as a str (or a Completion)."
            )
        if isinstance(result, Completion):
            text, stopped = cut_at_stop(result.text, config.stop)
            completion = Completion(
                text,
                FinishReason.STOP if stopped else result.finish_reason,
                result.token_usage,
                result.tool_calls,
                result.logprobs,
            )
        else:
            text, stopped = cut_at_stop(result, config.stop)
            completion = Completion(
                text,
                FinishReason.STOP,
                TokenUsage(prompt_tokens, self.count_tokens(text)),
            )
        if self._prompts_tools(config, raw):
            text, calls = parse_tool_calls(completion.text, config.tools)
            if calls:
                completion = Completion(
                    text,
                    FinishReason.TOOL_CALLS,
                    completion.token_usage,
                    calls,
                    completion.logprobs,
                )
        self._record(completion.token_usage)
        return completion

    def _prompts_tools(self, config: GenerationConfig, raw: bool) -> bool:
        """Whether tools go through the prompt (and calls come back in the answer's text)."""
        return not raw and not self.native_tools and config.tool_mode is not ToolChoiceMode.NONE

    async def _stream_prompt(
        self,
        prompt: str,
        prompt_tokens: int,
        config: GenerationConfig,
        *,
        raw: bool,
        chat: list[ChatMessage] | None = None,
    ) -> AsyncGenerator[StreamChunk, None]:
        stops = StopSequenceFilter(config.stop)
        calls = ToolCallFilter(config.tools) if self._prompts_tools(config, raw) else None
        tool_calls: tuple[ToolCall, ...] = ()
        finish = FinishReason.STOP
        usage: TokenUsage | None = None
        # Entries of tokens whose text is held back (stop sequences, tool calls): they go with
        # the next chunk that carries text, or the final one.
        logprobs: list[TokenLogprob] = []
        pieces = self._stream_implementation(prompt, **self._kwargs(config, raw, chat))
        try:
            async for piece in pieces:
                if isinstance(piece, StreamChunk):
                    text = piece.text
                    finish = piece.finish_reason or finish
                    usage = piece.token_usage or usage
                    tool_calls = piece.tool_calls or tool_calls
                    logprobs += piece.logprobs
                else:
                    text = piece
                released = stops.push(text)
                if calls is not None:
                    released = calls.push(released)
                if released:
                    yield StreamChunk(released, logprobs=tuple(logprobs))
                    logprobs.clear()
                if stops.stopped:
                    finish = FinishReason.STOP
                    break
        except GemmaChatError:
            raise
        except Exception as exc:
            raise self.map_error(exc) from exc
        finally:
            # Closing the implementation's generator stops its generation (no runaway work).
            aclose = getattr(pieces, "aclose", None)
            if aclose is not None:
                await aclose()
        tail = stops.flush()
        if usage is None:
            usage = TokenUsage(prompt_tokens, self.count_tokens(stops.text))
        if calls is not None:
            tail = calls.push(tail)
            rest, tool_calls = calls.finish()
            tail += rest
        if tool_calls:
            finish = FinishReason.TOOL_CALLS
        self._record(usage)
        yield StreamChunk(tail, finish, usage, tool_calls, tuple(logprobs))

    def get_model_info(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "backend": type(self).__name__,
            "state": self._state.value,
            "is_loaded": self.is_loaded,
            "context_length": self.context_length,
            "inference_count": self.inference_count,
            "total_tokens_generated": self.total_tokens_generated,
            "memory_usage": self.memory_usage,
            **self._extra_model_info(),
        }

    @property
    def memory_usage(self) -> dict[str, float]:
        """Process RSS, and on CUDA the memory torch has allocated and reserved, in MiB."""
        usage = {"rss_mb": psutil.Process().memory_info().rss / 2**20}
        torch = sys.modules.get("torch")  # only report CUDA if torch is in use already
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            usage["cuda_allocated_mb"] = torch.cuda.memory_allocated() / 2**20
            usage["cuda_reserved_mb"] = torch.cuda.memory_reserved() / 2**20
        return usage

    # -- shared machinery ----------------------------------------------------------------------

    def _require_loaded(self) -> None:
        if not self.is_loaded:
            raise ModelNotLoadedError(
                f"Model {self.model_name!r} is not loaded: call `await llm.load()` first, or use "
                "it through `async with InferenceService(...)`, which loads it."
            )

    def _prepare(
        self, messages: Sequence[ChatMessage], config: GenerationConfig
    ) -> tuple[str, int, list[ChatMessage]]:
        """Validate the conversation and fit it into the context window: (prompt, its tokens,
        the messages it holds)."""
        self._require_loaded()
        self._check_logprobs(config)
        chat = validated_messages(messages)
        if not self.native_tools:
            choice = config.tool_choice
            chat = render_tool_conversation(
                chat, config.tools, config.tool_mode, choice.name if choice else None
            )
        return fit_to_context(
            self, chat, config.max_new_tokens, truncate=self.settings.model.truncate_history
        )

    def _kwargs(
        self, config: GenerationConfig, raw: bool = False, chat: list[ChatMessage] | None = None
    ) -> dict[str, Any]:
        # ``raw``, ``messages`` and the structured-output arguments only when they apply, so
        # that adapters written before them never see them.
        kwargs = config.to_dict() | ({"raw": True} if raw else {})
        for name in ("response_format", "tools", "tool_choice"):
            kwargs.pop(name, None)
        if chat is not None and self.takes_messages:
            kwargs["messages"] = chat
        if self.native_tools and not raw:
            if config.tools:
                kwargs["tools"] = config.tools
            if config.tool_choice is not None:
                kwargs["tool_choice"] = config.tool_choice
            if config.response_format is not None:
                kwargs["response_format"] = config.response_format
            return kwargs
        choice = config.tool_choice
        mode = ToolChoiceMode.NONE if raw else config.tool_mode
        grammar = tool_grammar(
            config.tools, mode, choice.name if choice else None, config.response_format
        )
        if grammar is not None:
            kwargs["response_format"] = grammar
        return kwargs

    def _prepare_raw(self, prompt: str, config: GenerationConfig) -> int:
        self._require_loaded()
        self._check_logprobs(config)
        validate_content(prompt, what="prompt")
        prompt_tokens = self.count_tokens(prompt)
        limit = self.context_length
        if limit is not None and prompt_tokens + config.max_new_tokens > limit:
            raise ContextLengthExceededError(
                prompt_tokens=prompt_tokens,
                max_new_tokens=config.max_new_tokens,
                context_length=limit,
            )
        return prompt_tokens

    def _check_logprobs(self, config: GenerationConfig) -> None:
        if config.logprobs is not None and not self.supports_logprobs:
            raise InvalidGenerationConfigError(
                f"{type(self).__name__} ({self.model_name!r}) cannot return log probabilities: "
                "ask without logprobs.",
                field="logprobs",
            )

    def _record(self, usage: TokenUsage) -> None:
        self.inference_count += 1
        self.total_tokens_generated += usage.completion_tokens
