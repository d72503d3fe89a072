"""Token ids to text deltas as they are generated."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["IncrementalDetokenizer"]


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas, never splitting a UTF-8 character.

    A token can hold part of a multi-byte character; its text is held back until a later token
    completes the character (the decoded text then no longer ends in U+FFFD). Each step decodes
    only a short window of recent tokens (as TGI and vLLM do), not the whole answer again: the
    window starts a token before the new ones, so that a leading space the tokenizer drops at
    the start of a text is kept.
    """

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._emitted = ""
        self._prefix = 0  # the window's first token
        self._read = 0  # tokens before this one have been emitted

    @property
    def text(self) -> str:
        return self._emitted

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        """What is left when generation ends; an incomplete last character is dropped."""
        return self._advance(final=True)

    def _advance(self, *, final: bool) -> str:
        before = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        if final:
            text = text.rstrip("\ufffd")
        elif text.endswith("\ufffd"):
            return ""  # a character still incomplete: wait for the next token
        if len(text) <= len(before) or not text.startswith(before):
            return ""
        delta = text[len(before) :]
        self._emitted += delta
        self._prefix, self._read = self._read, len(self._ids)
        return delta
