"""What the generators and ``GemmaLLM`` need from a tokenizer, whatever its backend."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gemma_chat.domain.models import ChatMessage

__all__ = ["TextTokenizer"]


class TextTokenizer(Protocol):
    bos_token: str | None
    chat_template: str | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def token_id(self, token: str | None) -> int | None: ...

    @property
    def eos_token_id(self) -> int | None: ...

    @property
    def special_tokens(self) -> frozenset[str]: ...

    def render_chat(self, messages: Sequence[ChatMessage]) -> str: ...
