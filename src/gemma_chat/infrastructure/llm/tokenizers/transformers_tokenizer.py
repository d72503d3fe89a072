"""A transformers tokenizer (``AutoTokenizer``) behind ``TextTokenizer``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gemma_chat.domain.models import ChatMessage

__all__ = ["TransformersTokenizer"]


class TransformersTokenizer:
    """A transformers tokenizer behind ``TextTokenizer``."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.bos_token: str | None = tokenizer.bos_token
        self.chat_template: str | None = getattr(tokenizer, "chat_template", None)

    @property
    def hf_tokenizer(self) -> Any:
        """The transformers tokenizer itself (for libraries that read it, as xgrammar)."""
        return self._tokenizer

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self._tokenizer(text, add_special_tokens=False).input_ids
        return ids

    def decode(self, ids: list[int]) -> str:
        text: str = self._tokenizer.decode(ids, skip_special_tokens=True)
        return text

    def token_id(self, token: str | None) -> int | None:
        if token is None:
            return None
        found = self._tokenizer.convert_tokens_to_ids(token)
        if not isinstance(found, int) or found == self._tokenizer.unk_token_id:
            return None
        return found

    @property
    def eos_token_id(self) -> int | None:
        found = self._tokenizer.eos_token_id
        return int(found) if found is not None else None

    @property
    def special_tokens(self) -> frozenset[str]:
        decoder = getattr(self._tokenizer, "added_tokens_decoder", {}) or {}
        added = {t.content for t in decoder.values() if getattr(t, "special", False)}
        return frozenset(added | set(self._tokenizer.all_special_tokens))

    def render_chat(self, messages: Sequence[ChatMessage]) -> str:
        prompt: str = self._tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=True
        )
        return prompt
