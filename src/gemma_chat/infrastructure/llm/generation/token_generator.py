"""What ``GemmaLLM`` needs from the code that turns prompts into tokens.

Two implementations: ``TransformersGenerator`` (any transformers causal LM, CPU or CUDA, one
request at a time) and ``NativeGenerator`` (the lean Gemma 3 CPU engine with continuous batching
and KV reuse). Both take ``GenerationJob``s and feed them tokens from their own worker thread.
"""

from __future__ import annotations

from typing import Any, Protocol

from gemma_chat.infrastructure.llm.generation.job import GenerationJob
from gemma_chat.infrastructure.llm.tokenizers.text_tokenizer import TextTokenizer

__all__ = ["TokenGenerator"]


class TokenGenerator(Protocol):
    @property
    def tokenizer(self) -> TextTokenizer: ...

    @property
    def context_length(self) -> int | None: ...

    @property
    def end_ids(self) -> frozenset[int]: ...

    @property
    def vocab_size(self) -> int: ...

    def submit(self, job: GenerationJob) -> None: ...

    def wake(self) -> None: ...

    def close(self) -> None: ...

    def info(self) -> dict[str, Any]: ...
