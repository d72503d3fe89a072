"""Cutting generated text at stop sequences, also while it streams.

A streamed delta is only released once no stop sequence can begin inside it, so the streamed
pieces always join to exactly the text a non-streamed call returns.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["StopSequenceFilter", "cut_at_stop"]


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the stop sequence that is complete first, and whether one was found.

    "Complete first" (the earliest end, then the earliest start) is what a token-by-token
    generation sees, so the cut does not depend on how the text was split into tokens.
    """
    matches = [(i + len(s), i) for s in stops if s and (i := text.find(s)) >= 0]
    if not matches:
        return text, False
    return text[: min(matches)[1]], True


class StopSequenceFilter:
    """Feed it the text as it grows; it returns what is safe to show."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._text = ""
        self._released = 0
        self.stopped = False

    @property
    def text(self) -> str:
        """Everything released so far."""
        return self._text[: self._released]

    def push(self, delta: str) -> str:
        """Add generated text; return the newly releasable part (empty once stopped)."""
        if self.stopped or not delta:
            return ""
        self._text += delta
        # Only the unreleased tail plus the longest stop's overlap can hold a new match.
        longest = max((len(s) for s in self._stops), default=0)
        start = max(0, self._released - longest + 1)
        cut, found = cut_at_stop(self._text[start:], self._stops)
        if found:
            self.stopped = True
            return self._release(start + len(cut))
        return self._release(len(self._text) - self._held_back())

    def flush(self) -> str:
        """Release what was held back (the generation ended without a stop sequence)."""
        if self.stopped:
            return ""
        return self._release(len(self._text))

    def _held_back(self) -> int:
        """Length of the longest tail of the text that could still grow into a stop sequence."""
        text = self._text
        if not text:
            return 0
        last, best = text[-1], 0
        for stop in self._stops:
            # A tail that is the stop's first ``size`` characters ends as the text does: only
            # the sizes whose last character is the text's last one are compared (run per
            # generated token of every stream).
            size = min(len(stop) - 1, len(text))
            while size > best:
                size = stop.rfind(last, 0, size) + 1
                if size <= best:
                    break
                if text.endswith(stop[:size]):
                    best = size
                    break
                size -= 1
        return best

    def _release(self, end: int) -> str:
        end = max(end, self._released)
        piece = self._text[self._released : end]
        self._released = end
        return piece
