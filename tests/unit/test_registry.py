"""The registry that maps model names to LLM adapters."""

from __future__ import annotations

from typing import Any

import pytest

from gemma_chat.domain.errors import ConfigurationError
from gemma_chat.infrastructure.llm.registry import LLMRegistry, default_registry, register_llm
from gemma_chat.shared.config import get_settings


class FakeAdapter:
    def __init__(self, label: str, settings: Any) -> None:
        self.label = label
        self.settings = settings


def factory(label: str) -> Any:
    def build(settings: Any) -> Any:
        return FakeAdapter(label, settings)

    build.__name__ = f"build_{label}"
    return build


def label_of(registry: LLMRegistry, model_name: str) -> str:
    adapter = registry.resolve(model_name)(None)
    assert isinstance(adapter, FakeAdapter)
    return adapter.label


def test_a_pattern_matches_model_names_that_contain_it() -> None:
    registry = LLMRegistry()
    registry.register("gemma", factory("gemma"))
    assert label_of(registry, "google/gemma-3-1b-it") == "gemma"
    assert label_of(registry, "gemma") == "gemma"


def test_matching_ignores_case_on_both_sides() -> None:
    registry = LLMRegistry()
    registry.register("GeMMa", factory("gemma"))
    assert label_of(registry, "google/GEMMA-3-1B-IT") == "gemma"
    assert label_of(registry, "my-gemma") == "gemma"


def test_a_name_that_only_contains_part_of_the_pattern_does_not_match() -> None:
    registry = LLMRegistry(fallback=factory("fallback"))
    registry.register("gemma", factory("gemma"))
    assert label_of(registry, "gem") == "fallback"


def test_later_registrations_are_tried_first() -> None:
    registry = LLMRegistry()
    registry.register("gemma", factory("built-in"))
    registry.register("gemma-3", factory("override"))
    assert label_of(registry, "google/gemma-3-1b-it") == "override"
    assert label_of(registry, "google/gemma-2-2b") == "built-in"
    assert registry.names == ["gemma-3", "gemma"]


def test_a_callable_matcher_decides_for_itself() -> None:
    registry = LLMRegistry()
    registry.register(lambda name: name.endswith(".gguf"), factory("gguf"), name="gguf-files")
    assert label_of(registry, "/models/tiny.gguf") == "gguf"
    assert registry.names == ["gguf-files"]
    with pytest.raises(ConfigurationError):
        registry.resolve("/models/tiny.bin")


def test_a_callable_matcher_is_named_after_its_function() -> None:
    def is_local(name: str) -> bool:
        return name.startswith("/")

    registry = LLMRegistry()
    registry.register(is_local, factory("local"))
    assert registry.names == ["is_local"]


def test_unmatched_names_go_to_the_fallback() -> None:
    registry = LLMRegistry(fallback=factory("fallback"))
    registry.register("llama", factory("llama"))
    assert label_of(registry, "Qwen/Qwen2.5-0.5B") == "fallback"


def test_without_a_fallback_an_unmatched_name_is_a_configuration_error() -> None:
    registry = LLMRegistry()
    registry.register("llama", factory("llama"))
    with pytest.raises(ConfigurationError, match=r"'Qwen/Qwen2\.5'.*registered patterns: llama"):
        registry.resolve("Qwen/Qwen2.5")


def test_an_empty_registry_says_nothing_is_registered() -> None:
    with pytest.raises(ConfigurationError, match="registered patterns: none"):
        LLMRegistry().resolve("anything")


def test_unregister_removes_an_entry_by_name() -> None:
    registry = LLMRegistry(fallback=factory("fallback"))
    registry.register("gemma", factory("gemma"), name="gemma-adapter")
    registry.unregister("gemma-adapter")
    assert registry.names == []
    assert label_of(registry, "gemma") == "fallback"


def test_unregistering_an_unknown_name_changes_nothing() -> None:
    registry = LLMRegistry()
    registry.register("gemma", factory("gemma"))
    registry.unregister("nope")
    assert registry.names == ["gemma"]


def test_an_empty_pattern_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="must not be empty"):
        LLMRegistry().register("", factory("x"))


def test_create_builds_the_adapter_for_the_configured_model_with_the_settings() -> None:
    registry = LLMRegistry()
    registry.register("tiny", factory("tiny"))
    settings = get_settings(model={"name": "acme/Tiny-Model"})
    adapter = registry.create(settings)
    assert isinstance(adapter, FakeAdapter)
    assert adapter.label == "tiny"
    assert adapter.settings is settings


def test_the_default_registry_serves_gemma_and_has_a_fallback() -> None:
    assert "gemma" in default_registry.names
    # Resolving does not build (nor import) anything: a factory is returned for any name.
    assert callable(default_registry.resolve("google/gemma-3-1b-it"))
    assert callable(default_registry.resolve("some/other-model"))


def test_register_llm_adds_to_the_default_registry() -> None:
    register_llm("unit-test-model", factory("unit"), name="unit-test-entry")
    try:
        assert default_registry.names[0] == "unit-test-entry"
        assert label_of(default_registry, "acme/Unit-Test-Model-7B") == "unit"
    finally:
        default_registry.unregister("unit-test-entry")
    assert "unit-test-entry" not in default_registry.names


# -- prefixes and the built-in remote backends -------------------------------------------------


def test_a_prefix_entry_matches_names_that_start_with_it() -> None:
    registry = LLMRegistry(fallback=factory("fallback"))
    registry.register("remote:", factory("remote"), prefix=True)
    assert label_of(registry, "REMOTE:model") == "remote"
    assert label_of(registry, "my-remote:model") == "fallback"


def test_a_prefix_entry_wins_over_contains_entries_registered_after_it() -> None:
    registry = LLMRegistry()
    registry.register("openai:", factory("remote"), prefix=True)
    registry.register("gemma", factory("gemma"))
    assert label_of(registry, "openai:gemma-3-27b-it") == "remote"
    assert label_of(registry, "google/gemma-3-1b-it") == "gemma"


def test_among_prefix_entries_later_registrations_are_tried_first() -> None:
    registry = LLMRegistry()
    registry.register("openai:", factory("built-in"), prefix=True)
    registry.register("openai:gpt", factory("override"), prefix=True)
    assert label_of(registry, "openai:gpt-4o") == "override"
    assert label_of(registry, "openai:o3") == "built-in"


def test_a_prefix_must_be_a_string() -> None:
    with pytest.raises(ConfigurationError, match="needs a string pattern"):
        LLMRegistry().register(lambda name: True, factory("x"), prefix=True)


def test_the_default_registry_sends_openai_names_to_the_remote_adapter() -> None:
    from gemma_chat.infrastructure.llm.adapters.openai_compatible import OpenAICompatibleLLM

    register_llm("gemma", factory("user-gemma"), name="user-gemma")
    try:
        llm = default_registry.create(get_settings(model={"name": "openai:gemma-3-27b-it"}))
    finally:
        default_registry.unregister("user-gemma")
    assert isinstance(llm, OpenAICompatibleLLM)
    assert llm.remote_model == "gemma-3-27b-it"


def test_the_default_registry_sends_vllm_names_to_vllm_in_process() -> None:
    from gemma_chat.infrastructure.llm.adapters.vllm import VLLMLLM

    llm = default_registry.create(get_settings(model={"name": "vllm:google/gemma-3-1b-it"}))
    assert isinstance(llm, VLLMLLM)
    assert llm.vllm_model == "google/gemma-3-1b-it"


@pytest.mark.parametrize("name", ["google/gemma-3-1b-it", "Qwen/Qwen2.5-7B-Instruct"])
def test_with_a_remote_base_url_every_unprefixed_name_is_served_there(name: str) -> None:
    from gemma_chat.infrastructure.llm.adapters.openai_compatible import OpenAICompatibleLLM

    settings = get_settings(model={"name": name}, remote={"base_url": "http://10.0.0.5:8000/v1"})
    llm = default_registry.create(settings)
    assert isinstance(llm, OpenAICompatibleLLM)
    assert (llm.remote_model, llm.base_url) == (name, "http://10.0.0.5:8000/v1")
