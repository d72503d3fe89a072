"""What ``GemmaLLM`` needs from the code that turns prompts into tokens.

Two implementations: ``TransformersLoop`` (any transformers causal LM, CPU or CUDA, one request
at a time) and ``EngineLoop`` (the lean Gemma 3 CPU engine with continuous batching and KV
reuse). Both take ``GenerationJob``s and feed them tokens from their own worker thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from gemma_chat.domain.models import ChatMessage
from gemma_chat.infrastructure.llm.engine.job import GenerationJob

__all__ = ["HFTokenizer", "TextTokenizer", "TokenLoop"]


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


class TokenLoop(Protocol):
    @property
    def tokenizer(self) -> TextTokenizer: ...

    @property
    def context_length(self) -> int | None: ...

    @property
    def end_ids(self) -> frozenset[int]: ...

    def submit(self, job: GenerationJob) -> None: ...

    def wake(self) -> None: ...

    def close(self) -> None: ...

    def info(self) -> dict[str, Any]: ...


class HFTokenizer:
    """A transformers tokenizer behind ``TextTokenizer``."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.bos_token: str | None = tokenizer.bos_token
        self.chat_template: str | None = getattr(tokenizer, "chat_template", None)

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
