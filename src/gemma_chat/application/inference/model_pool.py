"""Several models in one service: loaded on demand, the least recently used unloaded first.

The service's own model is always kept; other models named by requests are loaded when first
asked for and stay loaded while the memory they report fits the budget. A model in the middle
of a request is never unloaded.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from gemma_chat.domain.interfaces import LLMProtocol

__all__ = ["ModelPool"]

logger = logging.getLogger(__name__)


def footprint_mb(llm: LLMProtocol) -> float:
    value = llm.get_model_info().get("memory_footprint_mb", 0.0)
    return float(value) if isinstance(value, int | float) else 0.0


class ModelPool:
    def __init__(
        self,
        create: Callable[[str], LLMProtocol],
        *,
        budget_mb: float,
        max_models: int,
        reserved_mb: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self._create = create
        self._reserved_mb = reserved_mb
        self.budget_mb = budget_mb
        self.max_models = max_models
        self._models: OrderedDict[str, LLMProtocol] = OrderedDict()
        self._in_use: dict[str, int] = {}
        self._lock = asyncio.Lock()
        self.loads = 0
        self.unloads = 0

    @property
    def loaded(self) -> list[str]:
        return list(self._models)

    @asynccontextmanager
    async def use(self, name: str) -> AsyncIterator[LLMProtocol]:
        """The model called ``name``, loaded if needed and kept loaded while in use."""
        async with self._lock:
            llm = self._models.get(name)
            if llm is None:
                llm = self._create(name)
                await llm.load()
                self._models[name] = llm
                self.loads += 1
            self._models.move_to_end(name)
            self._in_use[name] = self._in_use.get(name, 0) + 1
            await self._fit(keep=name)
        try:
            yield llm
        finally:
            self._in_use[name] -= 1

    async def _fit(self, keep: str) -> None:
        """Unload idle models, least recently used first, until the pool fits its limits."""
        for name in list(self._models):
            if not self._over_limits():
                return
            if name == keep or self._in_use.get(name, 0):
                continue
            llm = self._models.pop(name)
            logger.info("Unloading idle model %s to stay within the memory budget", name)
            await llm.unload()
            self.unloads += 1

    def _over_limits(self) -> bool:
        total = self._reserved_mb() + sum(footprint_mb(m) for m in self._models.values())
        return len(self._models) > self.max_models or total > self.budget_mb

    async def close(self) -> None:
        async with self._lock:
            while self._models:
                _, llm = self._models.popitem()
                await llm.unload()
