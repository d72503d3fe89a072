"""Which adapter serves which model name: a registry instead of an if/elif chain.

``register_llm("new-model", NewLLM)`` makes ``InferenceService`` build ``NewLLM(settings)``
whenever ``GEMMA_MODEL__NAME`` contains ``new-model`` (case-insensitive). Later registrations
are tried first, so an application can override a built-in adapter.

A prefix entry (``register_llm("openai:", ..., prefix=True)``) names a backend explicitly: it
is tried before every "contains" entry, so ``openai:gemma-3`` never goes to the ``gemma``
adapter. Built in: ``openai:<model>`` (any OpenAI-compatible server) and ``vllm:<model>``
(vLLM in this process); with ``GEMMA_REMOTE__BASE_URL`` set, every other name is served by that
server too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gemma_chat.domain.errors import ConfigurationError
from gemma_chat.domain.interfaces import LLMProtocol
from gemma_chat.shared.config import Settings

__all__ = ["LLMFactory", "LLMRegistry", "default_registry", "register_llm"]

LLMFactory = Callable[[Settings], LLMProtocol]
Matcher = Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str
    matches: Matcher
    factory: LLMFactory
    is_prefix: bool = False


class LLMRegistry:
    def __init__(self, fallback: LLMFactory | None = None) -> None:
        self._entries: list[_Entry] = []
        self._fallback = fallback

    def register(
        self,
        pattern: str | Matcher,
        factory: LLMFactory,
        *,
        name: str | None = None,
        prefix: bool = False,
    ) -> None:
        """Serve model names containing ``pattern`` (or for which ``pattern(name)`` is true);
        with ``prefix=True``, names starting with ``pattern``, ahead of every other entry."""
        matches: Matcher
        if isinstance(pattern, str):
            needle = pattern.lower()
            if not needle:
                raise ConfigurationError("An LLM registry pattern must not be empty.")

            def matches(model_name: str) -> bool:
                return model_name.startswith(needle) if prefix else needle in model_name

            entry_name = name or pattern
        else:
            if prefix:
                raise ConfigurationError("prefix=True needs a string pattern, not a function.")
            matches = pattern
            entry_name = name or str(getattr(pattern, "__name__", repr(pattern)))
        self._entries.insert(0, _Entry(entry_name, matches, factory, prefix))

    def unregister(self, name: str) -> None:
        self._entries = [e for e in self._entries if e.name != name]

    @property
    def names(self) -> list[str]:
        return [e.name for e in self._entries]

    def resolve(self, model_name: str) -> LLMFactory:
        key = model_name.lower()
        # Prefix entries first (a stable sort keeps later registrations first within each kind).
        for entry in sorted(self._entries, key=lambda e: not e.is_prefix):
            if entry.matches(key):
                return entry.factory
        if self._fallback is None:
            raise ConfigurationError(
                f"No LLM adapter is registered for model {model_name!r}; registered patterns: "
                f"{', '.join(self.names) or 'none'}. Register one with register_llm()."
            )
        return self._fallback

    def create(self, settings: Settings) -> LLMProtocol:
        return self.resolve(settings.model.name)(settings)


def _transformers_llm(settings: Settings) -> LLMProtocol:
    from gemma_chat.infrastructure.llm.engine import tokenizer_prefetch

    # Overlaps the tokenizer's parsing with importing torch (cold start).
    tokenizer_prefetch.start(settings)
    # Imported here so that importing gemma_chat does not import torch.
    from gemma_chat.infrastructure.llm.adapters.local_model import GemmaLLM

    return GemmaLLM(settings)


def _openai_compatible_llm(settings: Settings) -> LLMProtocol:
    # Imported here so that importing gemma_chat does not import openai.
    from gemma_chat.infrastructure.llm.adapters.openai_compatible import OpenAICompatibleLLM

    return OpenAICompatibleLLM(settings)


def _vllm_llm(settings: Settings) -> LLMProtocol:
    from gemma_chat.infrastructure.llm.adapters.vllm import VLLMLLM  # imports vllm itself on load()

    return VLLMLLM(settings)


def _local_or_remote(settings: Settings) -> LLMProtocol:
    """GEMMA_REMOTE__BASE_URL moves every model name without a backend prefix to that server."""
    if settings.remote.base_url is not None:
        return _openai_compatible_llm(settings)
    return _transformers_llm(settings)


# GemmaLLM is transformers-based, so it also serves local directories and .gguf files of other
# architectures: it is both the "gemma" entry and the fallback.
default_registry = LLMRegistry(fallback=_local_or_remote)
default_registry.register("gemma", _local_or_remote, name="gemma")
default_registry.register("openai:", _openai_compatible_llm, name="openai", prefix=True)
default_registry.register("vllm:", _vllm_llm, name="vllm", prefix=True)


def register_llm(
    pattern: str | Matcher, factory: LLMFactory, *, name: str | None = None, prefix: bool = False
) -> None:
    """Register an adapter in the registry ``InferenceService`` uses by default."""
    default_registry.register(pattern, factory, name=name, prefix=prefix)
