"""The service's lifecycle: its ports, its own model and the others requests name, and its
state (``unopened → open → closed``); ``async with`` starts and closes it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from enum import StrEnum
from types import TracebackType
from typing import Self

from gemma_chat.application.inference.answers import Answers
from gemma_chat.application.inference.guards import Guard
from gemma_chat.application.inference.model_pool import ModelPool, footprint_mb
from gemma_chat.application.inference.policy import RequestPolicy
from gemma_chat.application.inference.ports import LLMProvider
from gemma_chat.application.inference.response_cache import ResponseCache
from gemma_chat.application.inference.statistics import ServiceStatistics
from gemma_chat.application.inference.turns import Turns
from gemma_chat.domain.errors import InvalidGenerationConfigError, ServiceStateError
from gemma_chat.domain.interfaces import LLMProtocol, SessionRepository
from gemma_chat.shared.config import Settings

__all__ = ["ServiceLifecycle", "ServiceState"]


class ServiceState(StrEnum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class ServiceLifecycle:
    """The service's ports, its model(s) and its state: ``InferenceService`` without the
    requests.

    ``async with`` loads the model and unloads it again on exit (a model passed in as ``llm`` is
    loaded if needed but left loaded: its owner decides when to unload it). ``sessions`` is
    closed on exit only when ``owns_sessions`` says the service was given it to own.
    """

    def __init__(
        self,
        settings: Settings,
        llm: LLMProtocol | None = None,
        *,
        sessions: SessionRepository,
        llms: LLMProvider,
        owns_sessions: bool = False,
    ) -> None:
        self.settings = settings
        self._llms = llms
        self._llm = llm
        self._owns_llm = llm is None
        self._sessions = sessions
        self._owns_sessions = owns_sessions
        self._cache = ResponseCache(settings.cache)
        self._stats = ServiceStatistics()
        self._state = ServiceState.UNOPENED
        self._policy = RequestPolicy(settings)
        self._guard = Guard(self._stats, settings.limits)
        self._answers = Answers(self._cache, self._guard)
        self._turns = Turns(
            sessions, self._stats, reject_busy=settings.limits.concurrent_turns == "reject"
        )
        performance = settings.performance
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
            self._llm = self._llms.create(self.settings)
        return self._llm

    def _create_named_llm(self, name: str) -> LLMProtocol:
        model = self.settings.model.model_copy(update={"name": name})
        return self._llms.create(self.settings.model_copy(update={"model": model}))

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
