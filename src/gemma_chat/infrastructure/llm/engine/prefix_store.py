"""Keys and values of finished sequences, kept for the next turn under a memory budget.

A conversation's next prompt starts with the previous prompt and answer, so the longest stored
token prefix of a new prompt saves its prefill. Least recently used entries go first. An entry
holds every position of the global layers and the last ones of the sliding-window layers
(``KVSnapshot``), so it serves the prefixes whose window it still holds.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from gemma_chat.infrastructure.llm.engine.kv_cache import KVSnapshot

__all__ = ["PrefixStore", "StoredPrefix", "common_prefix_length"]


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(frozen=True, slots=True)
class StoredPrefix:
    tokens: tuple[int, ...]
    kv: KVSnapshot

    @property
    def nbytes(self) -> int:
        return self.kv.nbytes


class PrefixStore:
    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[tuple[int, ...], StoredPrefix] = OrderedDict()
        self.nbytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, tokens: list[int], kv: KVSnapshot) -> bool:
        """Keep a prefix (evicting older ones to make room); False if it can never fit."""
        entry = StoredPrefix(tuple(tokens), kv)
        if entry.nbytes > self.budget_bytes or not tokens:
            return False
        self._drop(entry.tokens)
        # A stored prefix of the new entry is redundant where the new one serves it too.
        for key in [
            key
            for key in self._entries
            if entry.tokens[: len(key)] == key and kv.serves(len(key) - 1)
        ]:
            self._drop(key)
        while self.nbytes + entry.nbytes > self.budget_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)
            self.evictions += 1
        self._entries[entry.tokens] = entry
        self.nbytes += entry.nbytes
        return True

    def best_match(self, prompt: list[int], limit: int) -> tuple[StoredPrefix | None, int]:
        """The entry giving back the longest prefix of ``prompt`` (at most ``limit`` tokens),
        and that length."""
        best: StoredPrefix | None = None
        best_length = 0
        for entry in self._entries.values():
            length = min(common_prefix_length(list(entry.tokens), prompt), limit)
            if length > best_length and entry.kv.serves(length):
                best, best_length = entry, length
        if best is not None:
            self._entries.move_to_end(best.tokens)
        return best, best_length

    def pop(self, tokens: tuple[int, ...]) -> None:
        self._drop(tokens)

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0

    def _drop(self, tokens: tuple[int, ...]) -> None:
        entry = self._entries.pop(tokens, None)
        if entry is not None:
            self.nbytes -= entry.nbytes
