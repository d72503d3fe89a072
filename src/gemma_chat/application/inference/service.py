"""``InferenceService``: chat turns on sessions and stateless chats, with caching, statistics
and health; its lifecycle and public methods.

It receives its ports: the settings, an ``LLMProvider`` that builds models, a
``SessionRepository``, and optionally a ready ``LLMProtocol``. It builds none of them from
infrastructure: ``gemma_chat.InferenceService`` (``gemma_chat.bootstrap``) fills the defaults.
Here: the public methods. Beside it, one concern a module: ``lifecycle`` (ports, models, state),
``policy`` (what a request may ask), ``turns`` (the turn prelude and its recording), ``answers``
(cache or model), ``guards`` (time limit, failures), ``health``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import aclosing, asynccontextmanager
from typing import Any

from gemma_chat.application.inference.health import health_status, probe
from gemma_chat.application.inference.lifecycle import ServiceLifecycle, ServiceState
from gemma_chat.application.inference.structured import (
    ToolSet,
    response_format_of,
    tools_of,
)
from gemma_chat.application.inference.tool_runner import run_tool_calls
from gemma_chat.application.inference.turns import Turn
from gemma_chat.domain.errors import InvalidGenerationConfigError
from gemma_chat.domain.interfaces import LLMProtocol, RawCompletionProtocol
from gemma_chat.domain.models import (
    ChatMessage,
    ChatSession,
    Completion,
    GenerationConfig,
    InferenceResponse,
    Message,
    Role,
    StreamChunk,
    TokenUsage,
    ToolChoiceMode,
)

__all__ = ["InferenceService"]


class _Structured:
    """A request's structured-output and tool arguments as domain values: the overrides of
    its generation config, the parser of its answer, the Python functions among its tools."""

    def __init__(self, response_format: object, tools: Any, tool_choice: object) -> None:
        fmt, self.parser = response_format_of(response_format)
        self.tools: ToolSet = tools_of(tools)
        self.overrides: dict[str, Any] = {
            "response_format": fmt,
            "tools": self.tools.definitions or None,
            "tool_choice": tool_choice,
        }

    def merged(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        return {**overrides, **self.overrides}

    def parse(self, completion: Completion) -> Any:
        """``parsed`` of the response (None for an answer that called tools)."""
        if self.parser is None or completion.tool_calls:
            return None
        return self.parser.parse(completion)


class InferenceService(ServiceLifecycle):
    """Generates assistant turns for chat sessions, and answers stateless chats and prompts.

    ``async with`` loads the model and unloads it again on exit (a model passed in as ``llm`` is
    loaded if needed but left loaded: its owner decides when to unload it).
    """

    # -- turns on sessions ---------------------------------------------------------------------

    async def generate_response(
        self,
        session: ChatSession | str,
        user_message: str,
        temperature: float | None = None,
        *,
        model: str | None = None,
        response_format: object = None,
        tools: Sequence[object] | None = None,
        tool_choice: object = None,
        **overrides: Any,
    ) -> InferenceResponse:
        """Answer ``user_message`` in ``session`` (a session or its id).

        The user message, the answer and their token usage are added to the session when the
        answer is complete; on an error or cancellation the session is left exactly as it was.

        ``response_format``: a pydantic model (or another type), a JSON schema dict, OpenAI's
        ``response_format`` dict or a ``ResponseFormat``: the answer follows it (constrained
        decoding where the backend allows) and ``response.parsed`` is the validated value
        (``StructuredOutputError`` when the answer does not parse, and nothing is recorded).
        ``tools``: OpenAI function schemas or Python callables with type hints; the model's
        calls are in ``response.tool_calls``. ``tool_choice``: ``auto`` (the default), ``none``,
        ``required`` or a tool's name. ``run_tools`` also runs the calls and continues.
        """
        structured = _Structured(response_format, tools, tool_choice)
        overrides = structured.merged(overrides)
        async with self._turn(session, user_message, temperature, model, overrides) as turn:
            completion, cached = await self._answers.answer(turn.llm, turn.messages, turn.config)
            parsed = structured.parse(completion)
            response = await self._turns.record(turn, completion, cached=cached)
            return dataclasses.replace(response, parsed=parsed)

    async def run_tools(
        self,
        session: ChatSession | str,
        user_message: str,
        tools: Sequence[object],
        temperature: float | None = None,
        *,
        model: str | None = None,
        tool_choice: object = None,
        response_format: object = None,
        max_steps: int = 4,
        tool_timeout: float = 30.0,
        **overrides: Any,
    ) -> InferenceResponse:
        """``generate_response`` that also runs the tools the model calls and continues the
        turn with their results, until the model answers in text or ``max_steps`` answers.

        ``tools``: Python callables (async or not; also schemas, for which a call ends the
        turn). Each call runs within ``tool_timeout`` seconds, with its arguments validated
        against the function's signature; an exception, bad arguments or the time limit
        become the call's result, for the model to read. ``tool_choice`` applies to the first
        answer; later ones may choose (``auto``), and the last may not call (``none``). The
        session gets the user message, every call and result, and the answer, all at once.
        """
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
            raise InvalidGenerationConfigError(
                f"max_steps={max_steps!r}: expected an integer >= 1.", field="max_steps"
            )
        if not isinstance(tool_timeout, int | float) or not tool_timeout > 0:
            raise InvalidGenerationConfigError(
                f"tool_timeout={tool_timeout!r}: expected a number of seconds > 0.",
                field="tool_timeout",
            )
        structured = _Structured(response_format, tools, tool_choice)
        overrides = structured.merged(overrides)
        async with self._turn(session, user_message, temperature, model, overrides) as turn:
            messages = list(turn.messages)
            steps: list[Message] = []
            usage = TokenUsage()
            config = turn.config
            cached = False
            for step in range(max_steps):
                if step == max_steps - 1 and step > 0 and config.tools:
                    config = config.with_overrides(tool_choice=ToolChoiceMode.NONE.value)
                completion, cached = await self._answers.answer(turn.llm, messages, config)
                usage += completion.token_usage
                last = step == max_steps - 1
                if not completion.tool_calls or not structured.tools.functions or last:
                    break
                call = Message(
                    Role.ASSISTANT,
                    completion.text,
                    token_count=completion.token_usage.completion_tokens,
                    tool_calls=completion.tool_calls,
                )
                results = await run_tool_calls(
                    completion.tool_calls, structured.tools.functions, time_limit=tool_timeout
                )
                steps += [call, *results]
                messages += [m.to_chat_message() for m in (call, *results)]
                if config.tool_mode in (ToolChoiceMode.REQUIRED, ToolChoiceMode.NAMED):
                    config = config.with_overrides(tool_choice=ToolChoiceMode.AUTO.value)
            completion = dataclasses.replace(completion, token_usage=usage)
            parsed = structured.parse(completion)
            response = await self._turns.record(turn, completion, cached=cached, steps=steps)
            return dataclasses.replace(response, parsed=parsed)

    async def stream_response(
        self,
        session: ChatSession | str,
        user_message: str,
        temperature: float | None = None,
        *,
        model: str | None = None,
        response_format: object = None,
        tools: Sequence[object] | None = None,
        tool_choice: object = None,
        **overrides: Any,
    ) -> AsyncIterator[StreamChunk]:
        """Stream the answer as text chunks; the last chunk has ``finish_reason`` and usage
        (and the model's ``tool_calls``, with ``tools``: a call is never streamed as text).

        The turn is added to the session just before the last chunk is yielded; a consumer
        that stops early leaves the session unchanged and stops the generation.
        """
        overrides = _Structured(response_format, tools, tool_choice).merged(overrides)
        async with self._turn(session, user_message, temperature, model, overrides) as turn:

            async def record(completion: Completion, cached: bool) -> None:
                await self._turns.record(turn, completion, cached=cached)

            stream = self._answers.stream(turn.llm, turn.messages, turn.config, record)
            async with aclosing(stream) as chunks:
                async for chunk in chunks:
                    yield chunk

    async def regenerate_response(
        self,
        session: ChatSession | str,
        temperature: float | None = None,
        *,
        model: str | None = None,
        **overrides: Any,
    ) -> InferenceResponse:
        """A new answer to the session's last user message, which replaces the last answer.

        The session must end with an answer (``NothingToRegenerateError`` otherwise). The new
        turn takes the old one's place when it is complete; on an error or cancellation the
        session keeps the old answer.
        """
        async with self._turn(session, "", temperature, model, overrides, regenerate=True) as turn:
            completion, cached = await self._answers.answer(turn.llm, turn.messages, turn.config)
            return await self._turns.record(turn, completion, cached=cached)

    async def stream_regenerated_response(
        self,
        session: ChatSession | str,
        temperature: float | None = None,
        *,
        model: str | None = None,
        **overrides: Any,
    ) -> AsyncIterator[StreamChunk]:
        """``regenerate_response``, streamed as ``stream_response`` streams."""
        async with self._turn(session, "", temperature, model, overrides, regenerate=True) as turn:

            async def record(completion: Completion, cached: bool) -> None:
                await self._turns.record(turn, completion, cached=cached)

            stream = self._answers.stream(turn.llm, turn.messages, turn.config, record)
            async with aclosing(stream) as chunks:
                async for chunk in chunks:
                    yield chunk

    @asynccontextmanager
    async def _turn(
        self,
        session: ChatSession | str,
        user_message: str,
        temperature: float | None,
        model: str | None,
        overrides: Mapping[str, Any],
        *,
        regenerate: bool = False,
    ) -> AsyncIterator[Turn]:
        """The prelude every turn runs: input checked before anything waits, then the session
        (under its lock) and the model. ``regenerate``: ``user_message`` is ignored, the last
        turn's is answered again."""
        self._require_open()
        if regenerate:
            config = self._policy.regeneration(session, temperature, overrides)
        else:
            config = self._policy.turn(session, user_message, temperature, overrides)
        asked = None if regenerate else user_message
        async with self._turns.open(session, asked, config, self._model(model)) as turn:
            yield turn

    # -- stateless calls -----------------------------------------------------------------------

    async def chat(
        self,
        messages: Sequence[ChatMessage],
        temperature: float | None = None,
        *,
        model: str | None = None,
        response_format: object = None,
        tools: Sequence[object] | None = None,
        tool_choice: object = None,
        **overrides: Any,
    ) -> InferenceResponse:
        """Answer the last message of ``messages`` (the user's, or a tool's result), the whole
        conversation given: OpenAI's messages, assistant ones with ``tool_calls`` included.
        ``response_format``, ``tools`` and ``tool_choice`` as in ``generate_response``.

        Nothing is stored: the response has no ``session_id``.
        """
        self._require_open()
        structured = _Structured(response_format, tools, tool_choice)
        conversation, config = self._policy.chat(
            messages, temperature, structured.merged(overrides)
        )
        async with self._model(model) as llm:
            started = time.perf_counter()
            completion, cached = await self._answers.answer(llm, conversation, config)
            parsed = structured.parse(completion)
            response = self._turns.respond(llm, completion, started, cached=cached)
            return dataclasses.replace(response, parsed=parsed)

    async def stream_chat(
        self,
        messages: Sequence[ChatMessage],
        temperature: float | None = None,
        *,
        model: str | None = None,
        response_format: object = None,
        tools: Sequence[object] | None = None,
        tool_choice: object = None,
        **overrides: Any,
    ) -> AsyncIterator[StreamChunk]:
        """``chat`` as a stream of chunks; the last one has ``finish_reason`` and usage (and
        the ``tool_calls``)."""
        self._require_open()
        overrides = _Structured(response_format, tools, tool_choice).merged(overrides)
        conversation, config = self._policy.chat(messages, temperature, overrides)
        async with self._model(model) as llm:
            started = time.perf_counter()

            async def record(completion: Completion, cached: bool) -> None:
                self._turns.respond(llm, completion, started, cached=cached)

            async with aclosing(self._answers.stream(llm, conversation, config, record)) as chunks:
                async for chunk in chunks:
                    yield chunk

    async def complete(
        self,
        prompt: str,
        temperature: float | None = None,
        *,
        model: str | None = None,
        **overrides: Any,
    ) -> Completion:
        """Continue ``prompt`` as it is, without a session or a chat format."""
        self._require_open()
        config = self._policy.text(prompt, "prompt", temperature, overrides)
        async with self._model(model) as llm:
            completer = _raw_completer(llm)
            started = time.perf_counter()
            key = self._cache.key_for(llm.model_name, [{"role": "raw", "content": prompt}], config)
            completion = self._cache.get(key)
            cached = completion is not None
            if completion is None:
                completion = await self._guard.call(completer.complete(prompt, config))
                self._cache.put(key, completion)
            self._stats.record_success(
                time.perf_counter() - started,
                completion.token_usage.completion_tokens,
                cached=cached,
            )
            return completion

    async def stream_completion(
        self,
        prompt: str,
        temperature: float | None = None,
        *,
        model: str | None = None,
        **overrides: Any,
    ) -> AsyncIterator[StreamChunk]:
        """``complete`` as a stream of chunks; the last one has ``finish_reason`` and usage."""
        self._require_open()
        config = self._policy.text(prompt, "prompt", temperature, overrides)
        async with self._model(model) as llm:
            completer = _raw_completer(llm)
            started = time.perf_counter()
            stream = self._guard.stream(completer.stream_completion(prompt, config))
            async with aclosing(stream) as chunks:
                async for chunk in chunks:
                    if chunk.finish_reason is not None:
                        usage = chunk.token_usage or TokenUsage()
                        self._stats.record_success(
                            time.perf_counter() - started, usage.completion_tokens, cached=False
                        )
                    yield chunk

    def default_generation_config(self) -> GenerationConfig:
        """The generation parameters of a request that overrides nothing (from settings)."""
        return self._policy.default_generation_config()

    # -- sessions ------------------------------------------------------------------------------

    async def create_session(
        self,
        title: str = "New Chat",
        *,
        system_prompt: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> ChatSession:
        session = ChatSession(title, system_prompt=system_prompt, metadata=metadata)
        await self._sessions.add(session)
        return session

    async def add_session(self, session: ChatSession) -> ChatSession:
        """Keep an existing session in the service's store (to use it by id later)."""
        await self._sessions.add(session)
        return session

    async def get_session(self, session_id: str) -> ChatSession:
        return await self._sessions.get(session_id)

    async def list_sessions(self) -> list[ChatSession]:
        return await self._sessions.list()

    async def update_session(
        self,
        session_id: str,
        *,
        title: str | None = None,
        system_prompt: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> ChatSession:
        """Rename a session, change its system prompt ("" removes it) or replace its metadata;
        None leaves one as it is. Waits for a turn under way on the session, which would
        otherwise be refused when it saves (the session changed while it ran)."""
        async with self._turns.exclusive(session_id):
            session = await self._sessions.get(session_id)
            session.update(title=title, system_prompt=system_prompt, metadata=metadata)
            await self._sessions.save(session)
            return session

    async def delete_session(self, session_id: str) -> None:
        await self._sessions.delete(session_id)

    # -- observability -------------------------------------------------------------------------

    async def clear_cache(self) -> None:
        self._cache.clear()

    async def get_statistics(self) -> dict[str, Any]:
        return self.statistics()

    def statistics(self) -> dict[str, Any]:
        """``get_statistics()`` for synchronous callers (metrics exporters)."""
        return self._stats.snapshot(cache_size=len(self._cache))

    async def get_model_info(self) -> dict[str, Any]:
        return {**self.llm.get_model_info(), "other_models_loaded": self._pool.loaded}

    async def health_check(self) -> dict[str, Any]:
        """``status`` is unhealthy when the model is not serving (for a remote model: its server
        does not answer, said in ``backend_error``), degraded when at least half of the recent
        requests failed, healthy otherwise."""
        serving = self._state is ServiceState.OPEN and self.llm.is_loaded
        backend_error = await probe(self.llm) if serving else None
        report = {
            "status": health_status(serving, backend_error, self._stats),
            "service_state": self._state.value,
            "model_info": await self.get_model_info(),
            "statistics": await self.get_statistics(),
        }
        if backend_error is not None:
            report["backend_error"] = backend_error
        return report


def _raw_completer(llm: LLMProtocol) -> RawCompletionProtocol:
    if not isinstance(llm, RawCompletionProtocol):
        raise InvalidGenerationConfigError(
            f"The {llm.model_name!r} backend does not continue raw prompts: use chat messages."
        )
    return llm
