"""The error hierarchy and the messages that say what to do."""

from __future__ import annotations

import pytest

from gemma_chat.domain import errors
from gemma_chat.domain.errors import (
    BackendOverloadedError,
    BackendUnavailableError,
    ConfigurationError,
    ContextLengthExceededError,
    GemmaChatError,
    GenerationCancelledError,
    InferenceError,
    InvalidGenerationConfigError,
    InvalidMessageError,
    ModelLoadError,
    ModelNotFoundError,
    ModelNotLoadedError,
    OutOfMemoryError,
    ServiceStateError,
    SessionNotFoundError,
    ValidationError,
)


def test_context_length_exceeded_names_both_numbers_and_their_sum() -> None:
    error = ContextLengthExceededError(prompt_tokens=1000, max_new_tokens=256, context_length=1024)
    message = str(error)
    assert "1000 prompt tokens + 256 new tokens = 1256 tokens" in message
    assert "context window is 1024 tokens" in message
    assert "GEMMA_MODEL__TRUNCATE_HISTORY=true" in message
    assert (error.prompt_tokens, error.max_new_tokens, error.context_length) == (1000, 256, 1024)


def test_context_length_exceeded_is_a_validation_error() -> None:
    error = ContextLengthExceededError(prompt_tokens=1, max_new_tokens=1, context_length=1)
    assert isinstance(error, ValidationError)
    assert isinstance(error, ValueError)


def test_session_not_found_names_the_id_and_the_way_out() -> None:
    error = SessionNotFoundError("abc123")
    assert error.session_id == "abc123"
    assert str(error) == (
        "No chat session with id 'abc123': create it first, or list the existing ones."
    )


def test_session_not_found_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        raise SessionNotFoundError("x")


@pytest.mark.parametrize(
    "error_type",
    [
        ValidationError,
        InvalidMessageError,
        InvalidGenerationConfigError,
        SessionNotFoundError,
        ContextLengthExceededError,
        ModelNotLoadedError,
        GenerationCancelledError,
        ConfigurationError,
        ModelNotFoundError,
        ModelLoadError,
        InferenceError,
        OutOfMemoryError,
        ServiceStateError,
        BackendUnavailableError,
        BackendOverloadedError,
    ],
)
def test_every_error_is_a_gemma_chat_error(error_type: type[Exception]) -> None:
    assert issubclass(error_type, GemmaChatError)


def test_every_error_is_exported_from_one_place() -> None:
    import gemma_chat

    for name in errors.__all__:
        assert issubclass(getattr(errors, name), GemmaChatError), name
        assert name in gemma_chat.__all__, name
        assert getattr(gemma_chat, name) is getattr(errors, name), name


def test_a_model_too_large_says_its_numbers_and_is_a_memory_error() -> None:
    from gemma_chat import ModelTooLargeError

    error = ModelTooLargeError(
        "gemma-3-27b-it", weights_mb=27_000, kv_cache_mb=800, budget_mb=15_000, where="test"
    )
    assert isinstance(error, errors.ModelLoadError)
    assert isinstance(error, MemoryError)
    for number in ("27,800 MiB", "27,000 MiB of weights", "800 MiB of KV cache", "15,000 MiB"):
        assert number in str(error)


def test_the_engine_errors_sit_in_the_hierarchy() -> None:
    from gemma_chat import BrokenLogitsError, CorruptEntryError

    assert issubclass(BrokenLogitsError, InferenceError)
    assert issubclass(BrokenLogitsError, ValueError)
    assert "no finite probability" in str(BrokenLogitsError())
    assert issubclass(CorruptEntryError, ModelLoadError)


def test_the_docstring_draws_every_error_of_the_hierarchy() -> None:
    tree = errors.__doc__ or ""
    for name in errors.__all__:
        assert f" {name}" in tree, name


def test_standard_bases_let_callers_catch_errors_the_usual_way() -> None:
    assert issubclass(ConfigurationError, ValueError)
    assert issubclass(ModelNotFoundError, FileNotFoundError)
    assert issubclass(OutOfMemoryError, MemoryError)
    assert issubclass(OutOfMemoryError, InferenceError)
    assert issubclass(ModelNotLoadedError, RuntimeError)


def test_model_not_found_gives_the_detail_and_the_hints() -> None:
    error = ModelNotFoundError("acme/nothing", "It is not in the local Hugging Face cache.")
    message = str(error)
    assert message.startswith(
        "Model 'acme/nothing' was not found. It is not in the local Hugging Face cache.\nHints:"
    )
    assert "GEMMA_MODEL__NAME" in message
    assert "internet connection" in message
    assert "disk space" in message
    assert error.model_name == "acme/nothing"


def test_out_of_memory_gives_the_detail_and_the_hints() -> None:
    assert str(OutOfMemoryError("CUDA")).startswith("Out of memory: CUDA.\nHints:")
    message = str(OutOfMemoryError())
    assert message.startswith("Out of memory.\nHints:")
    assert "GEMMA_MODEL__QUANTIZATION=int8" in message


def test_a_context_error_without_numbers_quotes_the_server_and_how_to_truncate() -> None:
    error = ContextLengthExceededError(
        prompt_tokens=None, max_new_tokens=64, context_length=None, detail="Prompt is too long"
    )
    message = str(error)
    assert message.startswith("The conversation does not fit the model's context window.")
    assert "The model's server said: Prompt is too long" in message
    assert "GEMMA_MODEL__CONTEXT_LENGTH" in message
    assert (error.prompt_tokens, error.context_length, error.detail) == (
        None,
        None,
        "Prompt is too long",
    )


def test_model_not_found_may_give_its_own_hints() -> None:
    message = str(ModelNotFoundError("openai:x", "The server said 404.", hints="- Check it."))
    assert message == "Model 'openai:x' was not found. The server said 404.\nHints:\n- Check it."


def test_backend_errors_are_inference_errors_and_an_overload_keeps_its_wait() -> None:
    assert issubclass(BackendUnavailableError, InferenceError)
    error = BackendOverloadedError("busy", retry_after=2.5)
    assert isinstance(error, InferenceError)
    assert (str(error), error.retry_after) == ("busy", 2.5)
    assert BackendOverloadedError("busy").retry_after is None
