"""Answers kept for repeated deterministic requests (TTL and LRU bound, from cachetools)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from cachetools import TTLCache

from gemma_chat.domain.models import ChatMessage, Completion, GenerationConfig
from gemma_chat.shared.config import CacheSettings

__all__ = ["ResponseCache"]


class ResponseCache:
    def __init__(self, settings: CacheSettings) -> None:
        self._settings = settings
        self._entries: TTLCache[str, Completion] = TTLCache(
            maxsize=settings.max_size, ttl=settings.ttl_seconds
        )

    def key_for(
        self, model: str, messages: Sequence[ChatMessage], config: GenerationConfig
    ) -> str | None:
        """The cache key of a request, or None when the request must not be cached."""
        if not self._settings.enabled:
            return None
        if not config.is_deterministic and not self._settings.cache_nondeterministic:
            return None
        payload = json.dumps(
            {"model": model, "messages": list(messages), "config": config.to_dict()},
            sort_keys=True,
            ensure_ascii=False,
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def get(self, key: str | None) -> Completion | None:
        return None if key is None else self._entries.get(key)

    def put(self, key: str | None, completion: Completion) -> None:
        if key is not None:
            self._entries[key] = completion

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        self._entries.expire()
        return len(self._entries)
