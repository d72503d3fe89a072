"""``HFTokenizersTokenizer``: a saved tokenizer (``tokenizer.json``) on Hugging Face's
``tokenizers`` library alone, without transformers (which takes far longer to load)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gemma_chat.domain.models import ChatMessage
from gemma_chat.infrastructure.heap import give_back_freed_heap

__all__ = ["HFTokenizersTokenizer"]


class HFTokenizersTokenizer:
    """Encodes without adding special tokens (prompts carry their own) and decodes without them."""

    def __init__(self, tokenizer: Any, config: dict[str, Any]) -> None:
        self._tokenizer = tokenizer
        self.bos_token: str | None = _token_text(config.get("bos_token"))
        self.eos_token: str | None = _token_text(config.get("eos_token"))
        self.chat_template: str | None = config.get("chat_template")

    @classmethod
    def from_dir(cls, directory: Path) -> HFTokenizersTokenizer:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        give_back_freed_heap()  # parsing leaves several times the file's size freed
        return cls(tokenizer, cls.read_config(directory))

    @staticmethod
    def read_config(directory: Path) -> dict[str, Any]:
        """tokenizer_config.json (special tokens, chat template) of a saved tokenizer."""
        config_path = directory / "tokenizer_config.json"
        config: dict[str, Any] = {}
        if config_path.is_file():
            config = json.loads(config_path.read_text())
        template = directory / "chat_template.jinja"
        if "chat_template" not in config and template.is_file():
            config["chat_template"] = template.read_text()
        return config

    @property
    def vocab_size(self) -> int:
        size: int = self._tokenizer.get_vocab_size(with_added_tokens=True)
        return size

    def token_pieces(self) -> list[str]:
        """Every token's text as the vocabulary spells it (``▁`` for a space, ``<0x0A>`` for a
        byte), by id; "" for an unused id."""
        return [self._tokenizer.id_to_token(i) or "" for i in range(self.vocab_size)]

    def backend_json(self) -> str | None:
        """The tokenizer.json this tokenizer was read from (None when not at hand)."""
        text: str = self._tokenizer.to_str()
        return text

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self._tokenizer.encode(text, add_special_tokens=False).ids
        return ids

    def decode(self, ids: list[int]) -> str:
        text: str = self._tokenizer.decode(ids, skip_special_tokens=True)
        return text

    def token_id(self, token: str | None) -> int | None:
        if token is None:
            return None
        found: int | None = self._tokenizer.token_to_id(token)
        return found

    @property
    def eos_token_id(self) -> int | None:
        return self.token_id(self.eos_token)

    @property
    def special_tokens(self) -> frozenset[str]:
        decoder = self._tokenizer.get_added_tokens_decoder()
        return frozenset(t.content for t in decoder.values() if t.special)

    def render_chat(self, messages: Sequence[ChatMessage]) -> str:
        """The tokenizer's chat template, rendered as transformers renders it."""
        if not self.chat_template:
            raise ValueError("this tokenizer has no chat template")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise ValueError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        rendered: str = env.from_string(self.chat_template).render(
            messages=list(messages),
            add_generation_prompt=True,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
        )
        return rendered


def _token_text(value: object) -> str | None:
    if isinstance(value, dict):  # {"content": "<bos>", ...} in older tokenizer configs
        content = value.get("content")
        return content if isinstance(content, str) else None
    return value if isinstance(value, str) else None
