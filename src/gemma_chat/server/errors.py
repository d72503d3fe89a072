"""Every error leaves the server as OpenAI's error JSON, with a status that says whose fault it is.

No traceback or file path ever reaches a client; unexpected errors are logged here instead.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from gemma_chat.domain.errors import (
    BackendOverloadedError,
    BackendUnavailableError,
    ConfigurationError,
    ContextLengthExceededError,
    GemmaChatError,
    GenerationTimeoutError,
    ModelNotFoundError,
    NothingToRegenerateError,
    OutOfMemoryError,
    ServiceStateError,
    SessionBusyError,
    SessionConflictError,
    SessionNotFoundError,
    ValidationError,
)
from gemma_chat.server.protocol import ErrorBody, ErrorResponse

__all__ = [
    "ERROR_RESPONSES",
    "APIError",
    "ClientDisconnected",
    "PublicError",
    "error_response",
    "field_path",
    "install_error_handlers",
    "public_error",
]

logger = logging.getLogger(__name__)

# A route's ``responses=`` for /docs: every error status has the same body.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 404, 409, 422, 429, 500, 503, 504)
}


class APIError(Exception):
    """An error the server raises itself, with its HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.code, self.param, self.headers = code, param, headers


def error_response(
    status: int,
    message: str,
    kind: str,
    *,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(message=message, type=kind, param=param, code=code))
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


def _status_of(exc: GemmaChatError) -> tuple[int, str, str | None]:
    if isinstance(exc, ContextLengthExceededError):
        return 400, "invalid_request_error", "context_length_exceeded"
    if isinstance(exc, NothingToRegenerateError):
        return 400, "invalid_request_error", "nothing_to_regenerate"
    if isinstance(exc, ValidationError):
        return 400, "invalid_request_error", None
    if isinstance(exc, SessionNotFoundError):
        return 404, "not_found_error", "session_not_found"
    if isinstance(exc, ModelNotFoundError):
        return 404, "not_found_error", "model_not_found"
    if isinstance(exc, SessionBusyError):
        return 409, "conflict_error", "session_busy"
    if isinstance(exc, SessionConflictError):
        return 409, "conflict_error", "session_conflict"
    # A remote model's server (GEMMA_REMOTE__BASE_URL) is overloaded even after the retries:
    # the same answer as our own overload, a 429 the client may retry after a while.
    if isinstance(exc, BackendOverloadedError):
        return 429, "rate_limit_error", "backend_overloaded"
    if isinstance(exc, BackendUnavailableError):
        return 503, "service_unavailable", "backend_unavailable"
    if isinstance(exc, ServiceStateError | OutOfMemoryError):
        return 503, "service_unavailable", None
    if isinstance(exc, GenerationTimeoutError):
        return 504, "timeout", "generation_timeout"
    if isinstance(exc, ConfigurationError):
        return 500, "server_error", "configuration_error"
    return 500, "server_error", None


# InferenceService's parameter names whose HTTP names differ (the session route's body has
# "content"; OpenAI's APIs have "max_tokens").
_HTTP_NAMES = {"user_message": "content", "max_new_tokens": "max_tokens"}


class PublicError:
    """What a client is told about a domain error: status, OpenAI's type and code, a message
    without anything internal (a remote server's address, a failure's details), headers."""

    def __init__(self, exc: GemmaChatError) -> None:
        self.status, self.kind, self.code = _status_of(exc)
        self.headers: dict[str, str] | None = None
        self.param: str | None = None
        if isinstance(exc, BackendOverloadedError):
            wait = exc.retry_after if exc.retry_after is not None else 1.0
            self.message = "The model's server is overloaded; retry shortly."
            self.headers = {"Retry-After": str(max(1, math.ceil(wait)))}
        elif isinstance(exc, BackendUnavailableError):
            self.message = "The model's server is unavailable; retry later."
            self.headers = {"Retry-After": "5"}
        elif isinstance(exc, ValidationError) and exc.field is not None:
            # The library's parameter names, as the HTTP API calls them.
            self.param = _HTTP_NAMES.get(exc.field, exc.field)
            self.message = str(exc).replace(exc.field, self.param, 1)
        elif self.status < 500 or self.status in (503, 504):
            self.message = str(exc)
        else:
            self.message = "The model failed; see the logs."


def public_error(exc: GemmaChatError) -> PublicError:
    """``exc`` as the client sees it; logged here when the client is not told the details."""
    public = PublicError(exc)
    if public.status < 500 and public.status != 429:
        return public  # the client's own mistake, told to it in full
    if public.message != str(exc):
        log = logger.warning if public.status in (429, 503) else logger.error
        log("Request failed: %s: %s", type(exc).__name__, exc)
    elif public.status >= 500:
        logger.error("Request failed: %s: %s", type(exc).__name__, exc)
    return public


# pydantic's tags for a union's members in an error location: a type ("str", "list[...]",
# "function-after[...]") or a model's class name; the API's own fields are snake_case.
_UNION_MEMBER = re.compile(r"^(str|int|float|bool|none|dict|list|.*\[.*\]|[A-Z]\w*)$")


def field_path(loc: Sequence[int | str]) -> str:
    """A pydantic error location as a client writes the field: ``messages[0].content``."""
    path = ""
    for part in loc:
        if part == "body" and not path:
            continue
        if isinstance(part, str) and _UNION_MEMBER.match(part):
            continue  # which member of a union pydantic tried, not a field
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


class ClientDisconnected(Exception):
    """The client went away before its answer was ready; nobody is left to send it to."""


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ClientDisconnected)
    async def client_gone(_: Request, exc: ClientDisconnected) -> Response:
        # nginx's "client closed request": only logs and metrics see it.
        return Response(status_code=499)

    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(
            exc.status, exc.message, exc.kind, code=exc.code, param=exc.param, headers=exc.headers
        )

    @app.exception_handler(GemmaChatError)
    async def domain_error(_: Request, exc: GemmaChatError) -> JSONResponse:
        public = public_error(exc)
        return error_response(
            public.status,
            public.message,
            public.kind,
            code=public.code,
            param=public.param,
            headers=public.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":  # loc is ("body", <character offset>)
            at = first.get("loc", ("body", "?"))[-1]
            reason = first.get("ctx", {}).get("error", "invalid JSON")
            message = f"The request body is not valid JSON: {reason} at character {at}."
            return error_response(422, message, "invalid_request_error")
        where = field_path(first.get("loc", ()))
        if first.get("type") == "extra_forbidden":
            # A field this server does not implement: refused by name, never silently ignored.
            message = f"Unsupported field {where!r}: this server does not implement it."
            return error_response(400, message, "invalid_request_error", param=where or None)
        message = f"Invalid request: {where or 'body'}: {first.get('msg', 'invalid value')}."
        return error_response(422, message, "invalid_request_error", param=where or None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), "invalid_request_error")

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("Unexpected error")
        return error_response(500, "Internal server error.", "server_error")
