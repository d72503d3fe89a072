"""The openai client's failures as gemma-chat errors, and which of them are worth a retry.

How servers phrase their errors differs (OpenAI, vLLM, TGI, llama.cpp, Ollama, gemma-chat): a
prompt over the context window becomes ``ContextLengthExceededError`` with the numbers the server
gave, a refusal by load ``BackendOverloadedError`` with its Retry-After, a bad key a
``ConfigurationError``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit, urlunsplit

import openai

from gemma_chat.domain.errors import (
    BackendOverloadedError,
    BackendUnavailableError,
    ConfigurationError,
    ContextLengthExceededError,
    GemmaChatError,
    InferenceError,
    InvalidGenerationConfigError,
    ModelNotFoundError,
)

__all__ = [
    "RemoteServer",
    "describe_cause",
    "error_from_openai",
    "retry_after",
    "retryable",
    "summary",
    "without_secrets",
]

# How servers say a prompt is too long: OpenAI and vLLM ("maximum context length is N"), TGI
# ("`inputs` tokens + `max_new_tokens` must be <= N"), llama.cpp ("exceeds the available context
# size"), Ollama and gemma-chat ("context length", "context window").
_CONTEXT_OVERFLOW = re.compile(
    r"context[ _](?:length|window|size)|`inputs` tokens|prompt is too long", re.IGNORECASE
)
_CONTEXT_LIMIT = re.compile(
    r"(?:maximum context length|context window|context size|context length) is (\d+)"
    r"|must be <= (\d+)",
    re.IGNORECASE,
)
_PROMPT_TOKENS = re.compile(
    r"\((\d+) in the messages|resulted in (\d+) tokens|needs (\d+) prompt tokens"
    r"|Given: (\d+) `inputs` tokens",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class RemoteServer:
    """What error messages say about the server and the model asked for."""

    base_url: str
    model_name: str
    timeout_seconds: float

    @property
    def where(self) -> str:
        return f"the server at {without_secrets(self.base_url)}"

    @property
    def server(self) -> str:
        """``where``, to start a sentence."""
        return f"The server at {without_secrets(self.base_url)}"


def error_from_openai(
    exc: openai.APIError, server: RemoteServer, *, retries: int = 0, max_new_tokens: int = 0
) -> GemmaChatError:
    """The gemma-chat error for the openai client's ``exc`` from ``server``."""
    after = f" after {retries} retries" if retries else ""
    if isinstance(exc, openai.APITimeoutError):
        return BackendUnavailableError(
            f"{server.server} did not answer within {server.timeout_seconds:g} s "
            f"(GEMMA_REMOTE__TIMEOUT_SECONDS){after}: raise the limit for long answers, or "
            "check the server's load."
        )
    if isinstance(exc, openai.APIConnectionError):
        return BackendUnavailableError(
            f"Could not reach {server.where}{after}: {describe_cause(exc)}. Check "
            "GEMMA_REMOTE__BASE_URL and that the server is running."
        )
    if isinstance(exc, openai.APIStatusError):
        return _status_error(exc, server, after, max_new_tokens)
    # e.g. an error event in the middle of a stream
    return InferenceError(f"{server.server} failed: {exc.message}")


def _status_error(
    exc: openai.APIStatusError, server: RemoteServer, after: str, max_new_tokens: int
) -> GemmaChatError:
    status, message = exc.status_code, _message(exc)
    said = f"{server.server} answered {status}: {message}"
    if status in (401, 403) or (status == 429 and exc.code == "insufficient_quota"):
        return ConfigurationError(
            f"{said}. Check GEMMA_REMOTE__API_KEY (or OPENAI_API_KEY for OpenAI's API) and "
            "the account behind it."
        )
    if status == 429:
        return BackendOverloadedError(
            f"{server.server} is overloaded (429: {message}){after}; retry later, or allow "
            "more retries (GEMMA_REMOTE__MAX_RETRIES, GEMMA_REMOTE__MAX_BACKOFF_SECONDS).",
            retry_after=retry_after(exc),
        )
    if status in (400, 413, 422) and _is_context_overflow(exc, message):
        return _context_error(exc, message, max_new_tokens)
    if status in (400, 413, 422):
        return InvalidGenerationConfigError(f"{server.server} rejected the request: {message}")
    if status == 404:
        return ModelNotFoundError(
            server.model_name,
            f"{said}.",
            hints=(
                f"- Check the model name against the server's list (GET {server.base_url}"
                "/models); GEMMA_MODEL__NAME=openai:<model> names it.\n"
                "- GEMMA_REMOTE__BASE_URL must be the API root, usually ending in /v1."
            ),
        )
    if status in (502, 503, 504):
        return BackendUnavailableError(f"{said}{after}.")
    return InferenceError(f"{said}{after}.")


def retryable(exc: openai.APIError) -> bool:
    if isinstance(exc, openai.APITimeoutError):
        return False  # the server may still be generating: a retry would double its work
    if isinstance(exc, openai.APIConnectionError):
        return True
    if isinstance(exc, openai.RateLimitError):
        return exc.code != "insufficient_quota"  # a quota does not come back by waiting
    return isinstance(exc, openai.APIStatusError) and exc.status_code >= 500


def retry_after(exc: openai.APIError) -> float | None:
    """The server's Retry-After (seconds or an HTTP date; or retry-after-ms), in seconds."""
    if not isinstance(exc, openai.APIStatusError):
        return None
    headers = exc.response.headers
    try:
        if "retry-after-ms" in headers:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (ValueError, TypeError, OverflowError):
        return None


def _message(exc: openai.APIStatusError) -> str:
    body = exc.body
    text = body.get("message") if isinstance(body, dict) else None
    return str(text or exc.message)[:500]


def summary(exc: openai.APIError) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"{exc.status_code}: {_message(exc)[:120]}"
    return describe_cause(exc)


def describe_cause(exc: BaseException) -> str:
    cause = exc.__cause__
    return f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)


def _is_context_overflow(exc: openai.APIStatusError, message: str) -> bool:
    if exc.code == "context_length_exceeded" or exc.type == "exceed_context_size_error":
        return True
    return bool(_CONTEXT_OVERFLOW.search(message))


def _first_number(pattern: re.Pattern[str], text: str) -> int | None:
    match = pattern.search(text)
    if match is None:
        return None
    return int(next(group for group in match.groups() if group is not None))


def _context_error(
    exc: openai.APIStatusError, message: str, max_new_tokens: int
) -> ContextLengthExceededError:
    body = exc.body if isinstance(exc.body, dict) else {}
    # llama.cpp sends the numbers as fields; the others only in the message.
    prompt_tokens = body.get("n_prompt_tokens")
    context_length = body.get("n_ctx")
    return ContextLengthExceededError(
        prompt_tokens=(
            prompt_tokens
            if isinstance(prompt_tokens, int)
            else _first_number(_PROMPT_TOKENS, message)
        ),
        max_new_tokens=max_new_tokens,
        context_length=(
            context_length
            if isinstance(context_length, int)
            else _first_number(_CONTEXT_LIMIT, message)
        ),
        detail=message,
    )


def without_secrets(url: str) -> str:
    """``url`` without user, password, query or fragment: safe to log and to show."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
