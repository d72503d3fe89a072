"""``InferenceService``: chat turns on a session, with caching, statistics and health.

It receives its ports (an ``LLMProtocol`` and a ``SessionRepository``) or builds the default
ones from settings, and is used as an async context manager::

    async with InferenceService() as service:
        response = await service.generate_response(session=session, user_message="Hello!")
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing, asynccontextmanager
from enum import StrEnum
from types import TracebackType
from typing import Any, Self

from gemma_chat.application.inference.model_pool import ModelPool, footprint_mb
from gemma_chat.application.inference.response_cache import ResponseCache
from gemma_chat.application.inference.statistics import ServiceStatistics
from gemma_chat.domain.interfaces import (
    HealthCheckProtocol,
    LLMProtocol,
    RawCompletionProtocol,
    SessionRepository,
)
from gemma_chat.domain.models import (
    ChatMessage,
    ChatSession,
    Completion,
    FinishReason,
    GenerationConfig,
    InferenceResponse,
    Role,
    StreamChunk,
    TokenUsage,
)
from gemma_chat.domain.models.message import validate_content
from gemma_chat.infrastructure.llm.registry import LLMRegistry, default_registry
from gemma_chat.infrastructure.repositories import create_session_repository
from gemma_chat.shared.config import Settings, get_settings
from gemma_chat.shared.exceptions import (
    GemmaChatError,
    GenerationTimeoutError,
    InferenceError,
    InvalidGenerationConfigError,
    InvalidMessageError,
    ServiceStateError,
    ValidationError,
)

__all__ = ["InferenceService", "ServiceState"]

logger = logging.getLogger(__name__)


class ServiceState(StrEnum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class InferenceService:
    """Generates assistant turns for chat sessions.

    ``async with`` loads the model and unloads it again on exit (a model passed in as ``llm`` is
    loaded if needed but left loaded: its owner decides when to unload it).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        llm: LLMProtocol | None = None,
        *,
        sessions: SessionRepository | None = None,
        registry: LLMRegistry | None = None,
    ) -> None:
        self.settings = settings if settings is not None else get_settings()
        self._registry = registry or default_registry
        self._llm = llm
        self._owns_llm = llm is None
        self._owns_sessions = sessions is None
        self._sessions: SessionRepository = sessions or create_session_repository(
            self.settings.storage.url
        )
        self._cache = ResponseCache(self.settings.cache)
        self._stats = ServiceStatistics()
        self._state = ServiceState.UNOPENED
        self._session_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        performance = self.settings.performance
        self._pool = ModelPool(
            self._create_named_llm,
            budget_mb=performance.model_memory_budget_mb,
            max_models=performance.max_extra_models,
            reserved_mb=lambda: footprint_mb(self.llm),
        )

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def state(self) -> ServiceState:
        return self._state

    @property
    def llm(self) -> LLMProtocol:
        if self._llm is None:
            self._llm = self._create_default_llm()
        return self._llm

    def _create_default_llm(self) -> LLMProtocol:
        """The adapter registered for ``settings.model.name`` (see ``register_llm``)."""
        return self._registry.create(self.settings)

    def _create_named_llm(self, name: str) -> LLMProtocol:
        model = self.settings.model.model_copy(update={"name": name})
        return self._registry.create(self.settings.model_copy(update={"model": model}))

    @asynccontextmanager
    async def _model(self, name: str | None) -> AsyncIterator[LLMProtocol]:
        """The service's own model, or another one a request names (loaded on demand)."""
        if name is None or name == self.llm.model_name:
            yield self.llm
            return
        if not isinstance(name, str) or not name.strip():
            raise InvalidGenerationConfigError(f"model must be a non-empty string, got {name!r}.")
        async with self._pool.use(name) as llm:
            yield llm

    async def start(self) -> None:
        if self._state is ServiceState.CLOSED:
            raise ServiceStateError(
                "This InferenceService was closed and cannot be reopened: create a new one."
            )
        if self._state is ServiceState.OPEN:
            return
        await self.llm.load()
        self._state = ServiceState.OPEN

    async def close(self) -> None:
        if self._state is ServiceState.OPEN:
            await self._pool.close()
            if self._owns_llm and self._llm is not None:
                await self._llm.unload()
            close = getattr(self._sessions, "close", None)
            if self._owns_sessions and close is not None:
                await close()
        self._state = ServiceState.CLOSED

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def _require_open(self) -> None:
        if self._state is ServiceState.UNOPENED:
            raise ServiceStateError(
                "The InferenceService is not started: use `async with InferenceService() as "
                "service:` or call `await service.start()` first."
            )
        if self._state is ServiceState.CLOSED:
            raise ServiceStateError("The InferenceService is closed: create a new one.")

    # -- turns ---------------------------------------------------------------------------------

    async def generate_response(
        self,
        session: ChatSession | str,
        user_message: str,
        temperature: float | None = None,
        *,
        model: str | None = None,
        **overrides: Any,
    ) -> InferenceResponse:
        """Answer ``user_message`` in ``session`` (a session or its id).

        The user message, the answer and their token usage are added to the session when the
        answer is complete; on an error or cancellation the session is left exactly as it was.
        """
        self._require_open()
        config = self._begin(session, user_message, temperature, overrides)
        # The session is read inside its lock: a turn queued behind another sees that turn.
        async with self._lock(_session_id(session)), self._model(model) as llm:
            chat_session = await self._resolve(session)
            started = time.perf_counter()
            messages = self._conversation(chat_session, user_message)
            completion, cached = await self._answer(llm, messages, config)
            return await self._complete_turn(
                llm, chat_session, user_message, completion, started, cached=cached
            )

    async def stream_response(
        self,
        session: ChatSession | str,
        user_message: str,
        temperature: float | None = None,
        *,
        model: str | None = None,
        **overrides: Any,
    ) -> AsyncIterator[StreamChunk]:
        """Stream the answer as text chunks; the last chunk has ``finish_reason`` and usage.

        The turn is added to the session just before the last chunk is yielded; a consumer
        that stops early leaves the session unchanged and stops the generation.
        """
        self._require_open()
        config = self._begin(session, user_message, temperature, overrides)
        # The session is read inside its lock: a turn queued behind another sees that turn.
        async with self._lock(_session_id(session)), self._model(model) as llm:
            chat_session = await self._resolve(session)
            started = time.perf_counter()
            messages = self._conversation(chat_session, user_message)

            async def record(completion: Completion, cached: bool) -> None:
                await self._complete_turn(
                    llm, chat_session, user_message, completion, started, cached=cached
                )

            async with aclosing(self._answer_stream(llm, messages, config, record)) as chunks:
                async for chunk in chunks:
                    yield chunk

    async def chat(
        self,
        messages: Sequence[ChatMessage],
        temperature: float | None = None,
        *,
        model: str | None = None,
        **overrides: Any,
    ) -> InferenceResponse:
        """Answer the last message of ``messages`` (the user's), the whole conversation given.

        Nothing is stored: the response has no ``session_id``.
        """
        self._require_open()
        conversation, config = self._chat_request(messages, temperature, overrides)
        async with self._model(model) as llm:
            started = time.perf_counter()
            completion, cached = await self._answer(llm, conversation, config)
            return self._stateless_response(llm, completion, started, cached=cached)

    async def stream_chat(
        self,
        messages: Sequence[ChatMessage],
        temperature: float | None = None,
        *,
        model: str | None = None,
        **overrides: Any,
    ) -> AsyncIterator[StreamChunk]:
        """``chat`` as a stream of chunks; the last one has ``finish_reason`` and usage."""
        self._require_open()
        conversation, config = self._chat_request(messages, temperature, overrides)
        async with self._model(model) as llm:
            started = time.perf_counter()

            async def record(completion: Completion, cached: bool) -> None:
                self._stateless_response(llm, completion, started, cached=cached)

            async with aclosing(self._answer_stream(llm, conversation, config, record)) as chunks:
                async for chunk in chunks:
                    yield chunk

    async def _answer(
        self, llm: LLMProtocol, messages: list[ChatMessage], config: GenerationConfig
    ) -> tuple[Completion, bool]:
        """The model's answer to ``messages`` from the cache or the model; and whether cached."""
        key = self._cache.key_for(llm.model_name, messages, config)
        completion = self._cache.get(key)
        if completion is not None:
            return completion, True
        completion = await self._guarded(self._in_time(llm.generate(messages, config)))
        self._cache.put(key, completion)
        return completion, False

    async def _answer_stream(
        self,
        llm: LLMProtocol,
        messages: list[ChatMessage],
        config: GenerationConfig,
        record: Callable[[Completion, bool], Awaitable[None]],
    ) -> AsyncGenerator[StreamChunk, None]:
        """``_answer`` as a stream; ``record(completion, cached)`` runs just before the last
        chunk is yielded (not for a cancelled generation, nor for a consumer that stops early)."""
        key = self._cache.key_for(llm.model_name, messages, config)
        hit = self._cache.get(key)
        if hit is not None:
            await record(hit, True)
            if hit.text:
                yield StreamChunk(hit.text)
            yield StreamChunk("", hit.finish_reason, hit.token_usage)
            return
        parts: list[str] = []
        async with aclosing(self._guarded_stream(llm.stream(messages, config))) as chunks:
            async for chunk in chunks:
                parts.append(chunk.text)
                if chunk.finish_reason is not None:
                    completion = Completion(
                        "".join(parts), chunk.finish_reason, chunk.token_usage or TokenUsage()
                    )
                    if completion.finish_reason is not FinishReason.CANCELLED:
                        self._cache.put(key, completion)
                        await record(completion, False)
                    yield chunk
                    return
                yield chunk
        raise InferenceError("The model's stream ended without a final chunk.")

    def _stateless_response(
        self, llm: LLMProtocol, completion: Completion, started: float, *, cached: bool
    ) -> InferenceResponse:
        latency = time.perf_counter() - started
        self._stats.record_success(latency, completion.token_usage.completion_tokens, cached=cached)
        return InferenceResponse(
            content=completion.text,
            token_usage=completion.token_usage,
            finish_reason=completion.finish_reason,
            model=llm.model_name,
            latency=latency,
            session_id=None,
            message_id=uuid.uuid4().hex,
            cached=cached,
        )

    async def complete(
        self,
        prompt: str,
        temperature: float | None = None,
        *,
        model: str | None = None,
        **overrides: Any,
    ) -> Completion:
        """Continue ``prompt`` as it is, without a session or a chat format."""
        self._require_open()
        config = self._config_for(prompt, "prompt", temperature, overrides)
        async with self._model(model) as llm:
            completer = _raw_completer(llm)
            started = time.perf_counter()
            key = self._cache.key_for(llm.model_name, [{"role": "raw", "content": prompt}], config)
            completion = self._cache.get(key)
            cached = completion is not None
            if completion is None:
                completion = await self._guarded(self._in_time(completer.complete(prompt, config)))
                self._cache.put(key, completion)
            self._stats.record_success(
                time.perf_counter() - started,
                completion.token_usage.completion_tokens,
                cached=cached,
            )
            return completion

    async def stream_completion(
        self,
        prompt: str,
        temperature: float | None = None,
        *,
        model: str | None = None,
        **overrides: Any,
    ) -> AsyncIterator[StreamChunk]:
        """``complete`` as a stream of chunks; the last one has ``finish_reason`` and usage."""
        self._require_open()
        config = self._config_for(prompt, "prompt", temperature, overrides)
        async with self._model(model) as llm:
            completer = _raw_completer(llm)
            started = time.perf_counter()
            stream = self._guarded_stream(completer.stream_completion(prompt, config))
            async with aclosing(stream) as chunks:
                async for chunk in chunks:
                    if chunk.finish_reason is not None:
                        usage = chunk.token_usage or TokenUsage()
                        self._stats.record_success(
                            time.perf_counter() - started, usage.completion_tokens, cached=False
                        )
                    yield chunk

    async def _guarded_stream(
        self, chunks: AsyncIterator[StreamChunk]
    ) -> AsyncGenerator[StreamChunk, None]:
        """A model's stream within the time limit, its failures counted and mapped; closing this
        closes the model's stream at once, which stops its generation."""
        finished = False
        try:
            async for chunk in self._timed(chunks):
                finished = chunk.finish_reason is not None
                yield chunk
        except (asyncio.CancelledError, GeneratorExit):
            if not finished:  # closed after its last chunk is a normal end, not a cancellation
                self._stats.record_cancelled()
            raise
        except GemmaChatError as exc:
            self._stats.record_error(client_error=isinstance(exc, ValidationError))
            raise
        except Exception as exc:
            self._stats.record_error()
            raise InferenceError(f"The model failed while streaming: {exc}") from exc
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    def _begin(
        self,
        session: ChatSession | str,
        user_message: str,
        temperature: float | None,
        overrides: Mapping[str, Any],
    ) -> GenerationConfig:
        """Validate a turn's input before anything waits or runs."""
        if not isinstance(session, ChatSession | str):
            raise ServiceStateError(
                f"session must be a ChatSession or a session id, got {type(session).__name__}."
            )
        return self._config_for(user_message, "user_message", temperature, overrides)

    def _config_for(
        self, text: str, what: str, temperature: float | None, overrides: Mapping[str, Any]
    ) -> GenerationConfig:
        """The request's generation config, within GEMMA_LIMITS__*."""
        validate_content(text, what=what)
        self._check_length(text, what)
        return self._generation_config(temperature, overrides)

    def _check_length(self, text: str, what: str) -> None:
        limit = self.settings.limits.max_message_chars
        if len(text) > limit:
            raise InvalidMessageError(
                f"{what} has {len(text)} characters; the limit is {limit} "
                "(GEMMA_LIMITS__MAX_MESSAGE_CHARS)."
            )

    def _chat_request(
        self,
        messages: Sequence[ChatMessage],
        temperature: float | None,
        overrides: Mapping[str, Any],
    ) -> tuple[list[ChatMessage], GenerationConfig]:
        """A stateless chat's conversation, validated and in the shape a session gives (the
        system messages joined into one, first), and its generation config."""
        if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
            raise InvalidMessageError(
                "messages must be a list of {'role': ..., 'content': ...} dicts, got "
                f"{type(messages).__name__}."
            )
        if not messages:
            raise InvalidMessageError("messages must not be empty: the last one is answered.")
        limit = self.settings.limits.max_messages
        if len(messages) > limit:
            raise InvalidMessageError(
                f"{len(messages)} messages; the limit is {limit} (GEMMA_LIMITS__MAX_MESSAGES)."
            )
        system: list[str] = []
        turns: list[ChatMessage] = []
        for index, message in enumerate(messages):
            role, content = self._chat_message(message, index)
            if role is Role.SYSTEM:
                system.append(content)
            else:
                turns.append({"role": role.value, "content": content})
        if role is not Role.USER:
            raise InvalidMessageError(
                f"messages[{len(messages) - 1}].role must be 'user': the last message is the one "
                "answered."
            )
        prompt = "\n\n".join(system)
        # As a session's system prompt: a blank one is none.
        head: list[ChatMessage] = (
            [{"role": Role.SYSTEM.value, "content": prompt}] if prompt.strip() else []
        )
        return [*head, *turns], self._generation_config(temperature, overrides)

    def _chat_message(self, message: object, index: int) -> tuple[Role, str]:
        if not isinstance(message, Mapping):
            raise InvalidMessageError(
                f"messages[{index}] must be a {{'role': ..., 'content': ...}} dict, got "
                f"{type(message).__name__}."
            )
        try:
            role = Role.parse(message.get("role"))
        except InvalidMessageError as exc:
            raise InvalidMessageError(f"messages[{index}].role: {exc}") from None
        what = f"messages[{index}].content"
        # A system prompt may be blank (then there is none), and what a model wrote is taken as
        # it was: as a session takes them.
        content = validate_content(
            message.get("content"), what=what, model_output=role is not Role.USER
        )
        self._check_length(content, what)
        return role, content

    def _generation_config(
        self, temperature: float | None, overrides: Mapping[str, Any]
    ) -> GenerationConfig:
        limits = self.settings.limits
        config = self.default_generation_config().with_overrides(
            temperature=temperature, **overrides
        )
        if overrides.get("max_new_tokens") is None and config.max_new_tokens > limits.max_tokens:
            # The settings' default may exceed the limit; only an explicit ask is an error.
            config = config.with_overrides(max_new_tokens=limits.max_tokens)
        if config.max_new_tokens > limits.max_tokens:
            raise InvalidGenerationConfigError(
                f"max_new_tokens={config.max_new_tokens} is over the limit of "
                f"{limits.max_tokens} (GEMMA_LIMITS__MAX_TOKENS)."
            )
        if len(config.stop) > limits.max_stop_sequences:
            raise InvalidGenerationConfigError(
                f"{len(config.stop)} stop sequences; the limit is {limits.max_stop_sequences} "
                "(GEMMA_LIMITS__MAX_STOP_SEQUENCES)."
            )
        return config

    async def _resolve(self, session: ChatSession | str) -> ChatSession:
        return await self._sessions.get(session) if isinstance(session, str) else session

    def default_generation_config(self) -> GenerationConfig:
        """The generation parameters of a request that overrides nothing (from settings)."""
        m = self.settings.model
        return GenerationConfig(
            temperature=m.temperature,
            top_p=m.top_p,
            top_k=m.top_k,
            max_new_tokens=m.max_new_tokens,
            seed=m.seed,
            repetition_penalty=m.repetition_penalty,
        )

    @staticmethod
    def _conversation(session: ChatSession, user_message: str) -> list[ChatMessage]:
        return [*session.to_chat_messages(), {"role": Role.USER.value, "content": user_message}]

    def _timeout_error(self) -> GenerationTimeoutError:
        limit = self.settings.limits.request_timeout_seconds
        return GenerationTimeoutError(
            f"The answer took longer than {limit:g} s (GEMMA_LIMITS__REQUEST_TIMEOUT_SECONDS) "
            "and was stopped; ask for fewer tokens or raise the limit."
        )

    async def _in_time(self, call: Awaitable[Completion]) -> Completion:
        try:
            return await asyncio.wait_for(call, self.settings.limits.request_timeout_seconds)
        except TimeoutError:
            raise self._timeout_error() from None

    async def _timed(self, chunks: AsyncIterator[StreamChunk]) -> AsyncIterator[StreamChunk]:
        """``chunks`` until the request's time limit; then the stream stops with an error."""
        deadline = time.monotonic() + self.settings.limits.request_timeout_seconds
        while True:
            try:
                chunk = await asyncio.wait_for(anext(chunks), deadline - time.monotonic())
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise self._timeout_error() from None
            yield chunk

    async def _guarded(self, call: Any) -> Completion:
        try:
            completion: Completion = await call
        except asyncio.CancelledError:
            self._stats.record_cancelled()
            raise
        except GemmaChatError as exc:
            self._stats.record_error(client_error=isinstance(exc, ValidationError))
            raise
        except Exception as exc:  # an adapter outside BaseLLM that did not map its error
            self._stats.record_error()
            raise InferenceError(f"The model failed: {type(exc).__name__}: {exc}") from exc
        return completion

    async def _complete_turn(
        self,
        llm: LLMProtocol,
        session: ChatSession,
        user_message: str,
        completion: Completion,
        started: float,
        *,
        cached: bool,
    ) -> InferenceResponse:
        _, answer = session.record_turn(
            user_message,
            completion.text,
            completion.token_usage,
            user_token_count=_count_tokens(llm, user_message),
        )
        if await self._sessions.contains(session.id):
            await self._sessions.save(session)
        latency = time.perf_counter() - started
        self._stats.record_success(latency, completion.token_usage.completion_tokens, cached=cached)
        return InferenceResponse(
            content=completion.text,
            token_usage=completion.token_usage,
            finish_reason=completion.finish_reason,
            model=llm.model_name,
            latency=latency,
            session_id=session.id,
            message_id=answer.id,
            cached=cached,
        )

    def _lock(self, session_id: str) -> asyncio.Lock:
        # Two turns on one session at once would interleave its history: run them in order.
        lock = self._session_locks.get(session_id)
        if lock is None:
            lock = asyncio.Lock()
            self._session_locks[session_id] = lock
        return lock

    # -- sessions ------------------------------------------------------------------------------

    async def create_session(
        self,
        title: str = "New Chat",
        *,
        system_prompt: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> ChatSession:
        session = ChatSession(title, system_prompt=system_prompt, metadata=metadata)
        await self._sessions.add(session)
        return session

    async def add_session(self, session: ChatSession) -> ChatSession:
        """Keep an existing session in the service's store (to use it by id later)."""
        await self._sessions.add(session)
        return session

    async def get_session(self, session_id: str) -> ChatSession:
        return await self._sessions.get(session_id)

    async def list_sessions(self) -> list[ChatSession]:
        return await self._sessions.list()

    async def delete_session(self, session_id: str) -> None:
        await self._sessions.delete(session_id)

    # -- observability -------------------------------------------------------------------------

    async def clear_cache(self) -> None:
        self._cache.clear()

    async def get_statistics(self) -> dict[str, Any]:
        return self.statistics()

    def statistics(self) -> dict[str, Any]:
        """``get_statistics()`` for synchronous callers (metrics exporters)."""
        return self._stats.snapshot(cache_size=len(self._cache))

    async def get_model_info(self) -> dict[str, Any]:
        return {**self.llm.get_model_info(), "other_models_loaded": self._pool.loaded}

    async def health_check(self) -> dict[str, Any]:
        """``status`` is unhealthy when the model is not serving (for a remote model: its server
        does not answer, said in ``backend_error``), degraded when at least half of the recent
        requests failed, healthy otherwise."""
        serving = self._state is ServiceState.OPEN and self.llm.is_loaded
        backend_error = await _probe(self.llm) if serving else None
        if not serving or backend_error is not None:
            status = "unhealthy"
        elif len(self._stats.recent_failures) >= 2 and self._stats.recent_error_rate >= 0.5:
            status = "degraded"
        else:
            status = "healthy"
        report = {
            "status": status,
            "service_state": self._state.value,
            "model_info": await self.get_model_info(),
            "statistics": await self.get_statistics(),
        }
        if backend_error is not None:
            report["backend_error"] = backend_error
        return report


async def _probe(llm: LLMProtocol) -> str | None:
    """What is wrong with the model's backend, if it can tell (``HealthCheckProtocol``)."""
    if not isinstance(llm, HealthCheckProtocol):
        return None
    try:
        await llm.check_health()
    except GemmaChatError as exc:
        return str(exc)
    return None


def _count_tokens(llm: LLMProtocol, text: str) -> int | None:
    try:
        return llm.count_tokens(text)
    except GemmaChatError:
        return None


def _raw_completer(llm: LLMProtocol) -> RawCompletionProtocol:
    if not isinstance(llm, RawCompletionProtocol):
        raise InvalidGenerationConfigError(
            f"The {llm.model_name!r} backend does not continue raw prompts: use chat messages."
        )
    return llm


def _session_id(session: ChatSession | str) -> str:
    return session if isinstance(session, str) else session.id
