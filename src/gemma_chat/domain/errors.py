"""Errors of the domain: every error gemma-chat raises derives from ``GemmaChatError``.

They live beside the models (standard library only) so that the domain, the application and
every adapter share one hierarchy; each message says what went wrong and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "ContextLengthExceededError",
    "GemmaChatError",
    "GenerationCancelledError",
    "GenerationTimeoutError",
    "InvalidGenerationConfigError",
    "InvalidMessageError",
    "ModelNotLoadedError",
    "SessionConflictError",
    "SessionNotFoundError",
    "ValidationError",
]


class GemmaChatError(Exception):
    """Base class of every error raised by gemma-chat."""


class ValidationError(GemmaChatError, ValueError):
    """Input that the domain rejects; the message names the field and the accepted values."""


class InvalidMessageError(ValidationError):
    """A chat message that cannot be accepted (wrong type, empty, unknown role)."""


class InvalidGenerationConfigError(ValidationError):
    """A generation parameter outside its accepted range."""


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
