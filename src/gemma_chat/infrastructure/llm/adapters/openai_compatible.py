"""``OpenAICompatibleLLM``: any OpenAI-compatible server as the model.

vLLM, TGI, llama.cpp's server, Ollama, SGLang, OpenAI itself or another gemma-chat server: the
remote engine owns the weights, the batching and the context window. This adapter sends the
conversation as messages to ``/chat/completions`` (a raw prompt to ``/completions``) with the
official ``openai`` client, streams the answer back and turns the server's failures into
gemma-chat errors. A refused request (429, 5xx, unreachable) is retried with backoff, but never
once an answer has started: a stream that breaks raises, and the service then records nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import openai

from gemma_chat.domain.errors import (
    BackendUnavailableError,
    ConfigurationError,
    GemmaChatError,
    InferenceError,
    InvalidGenerationConfigError,
    ModelNotFoundError,
    ModelNotLoadedError,
)
from gemma_chat.domain.models import (
    Completion,
    FinishReason,
    ResponseFormat,
    ResponseFormatKind,
    StreamChunk,
    TokenUsage,
    ToolCall,
)
from gemma_chat.infrastructure.llm.adapters.base import BaseLLM
from gemma_chat.infrastructure.llm.adapters.openai_errors import (
    RemoteServer,
    describe_cause,
    error_from_openai,
    retry_after,
    retryable,
    summary,
    without_secrets,
)
from gemma_chat.shared.config import Settings

if TYPE_CHECKING:
    import httpx2

__all__ = ["OPENAI_BASE_URL", "PREFIX", "OpenAICompatibleLLM"]

logger = logging.getLogger(__name__)

OPENAI_BASE_URL = "https://api.openai.com/v1"
PREFIX = "openai:"
_T = TypeVar("_T")


class OpenAICompatibleLLM(BaseLLM):
    """The model behind ``GEMMA_REMOTE__BASE_URL`` (or OpenAI's API for ``openai:<model>``).

    The server counts tokens and enforces its context window: its usage figures are reported
    as they are, and its context error becomes ``ContextLengthExceededError``. Locally, token
    counts are estimates (words and punctuation), used only when the server sends no usage and
    for ``GEMMA_MODEL__CONTEXT_LENGTH`` if that is set.
    """

    takes_messages = True
    native_tools = True  # tools, tool calls and response formats go to the server as they are

    def __init__(
        self, settings: Settings | None = None, *, http_client: httpx2.AsyncClient | None = None
    ) -> None:
        """``http_client``: the HTTP client to send requests with, e.g.
        ``openai.DefaultAsyncHttpxClient`` with a proxy, client certificates or a test
        transport; its owner closes it."""
        super().__init__(settings)
        self._http_client = http_client
        name = self.settings.model.name
        self.remote_model = name[len(PREFIX) :] if name.lower().startswith(PREFIX) else name
        if not self.remote_model.strip():
            raise ConfigurationError(
                f"GEMMA_MODEL__NAME={name!r} names no model: use openai:<model>, "
                "e.g. openai:gpt-4o-mini."
            )
        self.base_url = self.settings.remote.base_url or OPENAI_BASE_URL
        self._client: openai.AsyncOpenAI | None = None

    # -- where and how ---------------------------------------------------------------------------

    @property
    def is_openai(self) -> bool:
        """Whether the server is OpenAI's own API (its key and its parameter names apply)."""
        return urlsplit(self.base_url).hostname == "api.openai.com"

    @property
    def remote_server(self) -> RemoteServer:
        return RemoteServer(self.base_url, self.model_name, self.settings.remote.timeout_seconds)

    @property
    def where(self) -> str:
        return self.remote_server.where

    @property
    def server(self) -> str:
        """``where``, to start a sentence."""
        return self.remote_server.server

    def _api_key(self) -> str:
        configured = self.settings.remote.api_key
        if configured is not None:
            return configured.get_secret_value()
        if self.is_openai:
            # OPENAI_API_KEY goes to OpenAI only: never to another server someone configured.
            key = os.environ.get("OPENAI_API_KEY", "")
            if not key:
                raise ConfigurationError(
                    f"{self.model_name!r} runs on OpenAI's API, which needs a key: set "
                    "GEMMA_REMOTE__API_KEY or OPENAI_API_KEY."
                )
            return key
        return "EMPTY"  # servers without authentication take any key; the client needs one

    def _extra_model_info(self) -> dict[str, Any]:
        remote = self.settings.remote
        return {
            "backend": "openai-compatible",
            "base_url": without_secrets(self.base_url),
            "remote_model": self.remote_model,
            "timeout_seconds": remote.timeout_seconds,
            "max_retries": remote.max_retries,
        }

    # -- lifecycle -------------------------------------------------------------------------------

    async def _load_model_implementation(self) -> None:
        remote = self.settings.remote
        client = openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=self._api_key(),
            timeout=openai.Timeout(remote.timeout_seconds, connect=remote.connect_timeout_seconds),
            max_retries=0,  # retried here: with our backoff, and never once an answer started
            http_client=self._http_client,
        )
        try:
            page = await self._retrying(lambda: client.models.list())
        except ModelNotFoundError as exc:
            await self._close(client)
            raise ConfigurationError(
                f"{self.server} has no /models route (404): GEMMA_REMOTE__BASE_URL must be the "
                "root of an OpenAI-compatible API, usually ending in /v1."
            ) from exc
        except BaseException:
            await self._close(client)
            raise
        served = [model.id for model in page.data]
        if served and self.remote_model not in served:
            # Some servers (llama.cpp) answer under any name: a hint, not an error.
            logger.warning(
                "%s does not list the model %r (it lists %s)",
                self.where,
                self.remote_model,
                ", ".join(served[:10]),
            )
        self._client = client

    async def _unload_model_implementation(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await self._close(client)

    async def _close(self, client: openai.AsyncOpenAI) -> None:
        if self._http_client is None:  # a client passed in belongs to the caller
            await client.close()

    async def check_health(self) -> None:
        """Ask the server for its models (``GET /models``), once, within 5 s at most."""
        client = self._require_client()
        timeout = min(5.0, self.settings.remote.timeout_seconds)
        try:
            await client.with_options(max_retries=0, timeout=timeout).models.list()
        except openai.APIError as exc:
            raise self._error(exc) from exc

    def _require_client(self) -> openai.AsyncOpenAI:
        if self._client is None:
            raise ModelNotLoadedError(
                f"Model {self.model_name!r} is not connected: call `await llm.load()` first."
            )
        return self._client

    # -- generation ------------------------------------------------------------------------------

    def _params(self, kwargs: dict[str, Any], *, raw: bool) -> dict[str, Any]:
        """The request body's generation parameters."""
        params: dict[str, Any] = {
            "model": self.remote_model,
            "temperature": kwargs["temperature"],
            "top_p": kwargs["top_p"],
        }
        # OpenAI's chat API wants max_completion_tokens (its reasoning models refuse max_tokens);
        # every other server knows max_tokens, and /completions has nothing else.
        tokens = "max_completion_tokens" if self.is_openai and not raw else "max_tokens"
        params[tokens] = kwargs["max_new_tokens"]
        if kwargs["stop"]:
            params["stop"] = list(kwargs["stop"])
        if kwargs["seed"] is not None:
            params["seed"] = kwargs["seed"]
        if self.settings.remote.sampling_extras:
            # Not in OpenAI's API: vLLM's names, sent only when they change something.
            extra: dict[str, Any] = {}
            if kwargs["top_k"] > 0:
                extra["top_k"] = kwargs["top_k"]
            if kwargs["repetition_penalty"] != 1.0:
                extra["repetition_penalty"] = kwargs["repetition_penalty"]
            if extra:
                params["extra_body"] = extra
        if raw:
            return params
        if kwargs.get("tools"):
            params["tools"] = [t.to_openai() for t in kwargs["tools"]]
        if kwargs.get("tool_choice") is not None:
            params["tool_choice"] = kwargs["tool_choice"].to_openai()
        if kwargs.get("response_format") is not None:
            self._response_format(kwargs["response_format"], params)
        return params

    def _response_format(self, fmt: ResponseFormat, params: dict[str, Any]) -> None:
        """OpenAI's ``response_format`` for JSON; the other kinds as vLLM's guided decoding
        fields (llama.cpp's ``grammar`` for a grammar), which only servers beyond OpenAI's API
        read: sent with GEMMA_REMOTE__SAMPLING_EXTRAS only."""
        if fmt.kind is ResponseFormatKind.JSON_SCHEMA:
            params["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": fmt.name,
                    "schema": dict(fmt.schema or {}),
                    "strict": fmt.strict,
                },
            }
            return
        if fmt.kind is ResponseFormatKind.JSON_OBJECT:
            params["response_format"] = {"type": "json_object"}
            return
        if not self.settings.remote.sampling_extras:
            raise InvalidGenerationConfigError(
                f"A {fmt.kind.value} response format is not in OpenAI's API: set "
                "GEMMA_REMOTE__SAMPLING_EXTRAS=true for a server that takes vLLM's guided "
                "decoding fields (vLLM, SGLang, gemma-chat), or use a JSON schema.",
                field="response_format",
            )
        extra = params.setdefault("extra_body", {})
        if fmt.kind is ResponseFormatKind.REGEX:
            extra["guided_regex"] = fmt.pattern
        elif fmt.kind is ResponseFormatKind.CHOICE:
            extra["guided_choice"] = list(fmt.choices)
        else:
            extra["guided_grammar"] = fmt.grammar
            extra["grammar"] = fmt.grammar  # llama.cpp's server

    async def _send(self, prompt: str, kwargs: dict[str, Any], **extra: Any) -> Any:
        """One request to /chat/completions (or /completions for a raw prompt), retried while
        the server refuses it for a passing reason."""
        client = self._require_client()
        params = self._params(kwargs, raw=bool(kwargs.get("raw"))) | extra

        async def send() -> Any:
            if kwargs.get("raw"):
                return await client.completions.create(prompt=prompt, **params)
            return await client.chat.completions.create(messages=kwargs["messages"], **params)

        return await self._retrying(send, max_new_tokens=kwargs["max_new_tokens"])

    async def _generate_implementation(self, prompt: str, **kwargs: Any) -> Completion:
        answer = await self._send(prompt, kwargs)
        if not answer.choices:
            raise InferenceError(f"{self.server} answered without any choice.")
        choice = answer.choices[0]
        text: str = (choice.text if kwargs.get("raw") else choice.message.content) or ""
        calls: tuple[ToolCall, ...] = ()
        if not kwargs.get("raw") and choice.message.tool_calls:
            calls = tuple(
                ToolCall(c.function.name, c.function.arguments or "{}", c.id or _call_id(i))
                for i, c in enumerate(choice.message.tool_calls)
            )
        finish = FinishReason.TOOL_CALLS if calls else _finish(choice.finish_reason)
        return Completion(text, finish, self._usage(answer.usage, prompt, text), calls)

    async def _stream_implementation(
        self, prompt: str, **kwargs: Any
    ) -> AsyncIterator[StreamChunk]:
        raw = bool(kwargs.get("raw"))
        stream = await self._send(
            prompt, kwargs, stream=True, stream_options={"include_usage": True}
        )
        finish: FinishReason | None = None
        usage: Any = None
        parts: list[str] = []
        calls: dict[int, list[str]] = {}  # index -> [id, name, arguments]
        try:
            async for chunk in stream:
                usage = chunk.usage or usage
                for choice in chunk.choices[:1]:
                    text = choice.text if raw else choice.delta.content
                    if text:
                        parts.append(text)
                        yield StreamChunk(text)
                    for delta in (None if raw else choice.delta.tool_calls) or ():
                        call = calls.setdefault(delta.index, ["", "", ""])
                        call[0] = delta.id or call[0]
                        if delta.function is not None:
                            call[1] += delta.function.name or ""
                            call[2] += delta.function.arguments or ""
                    if choice.finish_reason:
                        finish = _finish(choice.finish_reason)
        except openai.APITimeoutError as exc:  # no piece within the timeout
            raise self._error(exc) from exc
        except openai.APIConnectionError as exc:
            raise BackendUnavailableError(
                f"The connection to {self.where} broke after {len(parts)} pieces of the answer "
                f"({describe_cause(exc)}); the answer is incomplete."
            ) from exc
        finally:
            # Closing the response tells the server the reader is gone: it stops generating.
            await stream.close()
        if finish is None:
            raise BackendUnavailableError(
                f"{self.server} ended its stream before the answer was finished (no "
                "finish_reason); the answer is incomplete."
            )
        tool_calls = tuple(
            ToolCall(name, arguments or "{}", call_id or _call_id(index))
            for index, (call_id, name, arguments) in sorted(calls.items())
        )
        if tool_calls:
            finish = FinishReason.TOOL_CALLS
        yield StreamChunk("", finish, self._usage(usage, prompt, "".join(parts)), tool_calls)

    def _usage(self, usage: Any, prompt: str, text: str) -> TokenUsage:
        """The server's token counts; estimates when it sent none."""
        if usage is None:
            return TokenUsage(self.count_tokens(prompt), self.count_tokens(text))
        return TokenUsage(usage.prompt_tokens or 0, usage.completion_tokens or 0)

    # -- retries and errors ----------------------------------------------------------------------

    async def _retrying(self, call: Callable[[], Awaitable[_T]], *, max_new_tokens: int = 0) -> _T:
        """``call()``, again after a backoff while the server refuses it for a passing reason."""
        attempt = 0
        while True:
            try:
                return await call()
            except openai.APIError as exc:
                delay = self._retry_delay(exc, attempt)
                if delay is None:
                    raise self._error(exc, retries=attempt, max_new_tokens=max_new_tokens) from exc
                attempt += 1
                logger.warning(
                    "Retry %d of %d in %.2f s: %s refused the request (%s)",
                    attempt,
                    self.settings.remote.max_retries,
                    delay,
                    self.where,
                    summary(exc),
                )
                await asyncio.sleep(delay)

    def _retry_delay(self, exc: openai.APIError, attempt: int) -> float | None:
        """Seconds to wait before the next attempt, or None to give up."""
        remote = self.settings.remote
        if attempt >= remote.max_retries or not retryable(exc):
            return None
        backoff = min(remote.max_backoff_seconds, remote.backoff_seconds * 2.0**attempt)
        delay = backoff * random.uniform(0.5, 1.0)  # jitter: clients refused together spread out
        asked = retry_after(exc)
        if asked is not None:
            if asked > remote.max_backoff_seconds:
                return None  # longer than we may wait: say so now instead
            delay = max(delay, asked)
        return delay

    def map_error(self, exc: Exception) -> GemmaChatError:
        return self._error(exc)

    def _error(
        self, exc: Exception, *, retries: int = 0, max_new_tokens: int = 0
    ) -> GemmaChatError:
        if isinstance(exc, openai.APIError):
            return error_from_openai(
                exc, self.remote_server, retries=retries, max_new_tokens=max_new_tokens
            )
        return super().map_error(exc)


def _finish(reason: str | None) -> FinishReason:
    if reason == "tool_calls":
        return FinishReason.TOOL_CALLS
    return FinishReason.LENGTH if reason == "length" else FinishReason.STOP


def _call_id(index: int) -> str:
    return f"call_{index}"
