"""Chat turns on sessions: the prelude ``generate_response`` and ``stream_response`` share (the
session read under its lock, the model chosen, the conversation built), and the recording of a
finished turn; and the response of a stateless chat."""

from __future__ import annotations

import asyncio
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

from gemma_chat.application.inference.statistics import ServiceStatistics
from gemma_chat.domain.errors import GemmaChatError, SessionBusyError
from gemma_chat.domain.interfaces import LLMProtocol, SessionRepository
from gemma_chat.domain.models import (
    ChatMessage,
    ChatSession,
    Completion,
    GenerationConfig,
    InferenceResponse,
    Message,
    Role,
)

__all__ = ["Turn", "Turns"]


@dataclass(frozen=True, slots=True)
class Turn:
    """A turn ready to run: nothing of it is in the session until ``Turns.record``."""

    llm: LLMProtocol
    session: ChatSession
    user_message: str
    messages: list[ChatMessage]  # the conversation sent to the model
    config: GenerationConfig
    started: float  # time.perf_counter() when the turn got its session and model
    replaces_last: bool = False  # a regeneration: recorded in the last turn's place


class Turns:
    def __init__(
        self, sessions: SessionRepository, stats: ServiceStatistics, *, reject_busy: bool = False
    ) -> None:
        self._sessions = sessions
        self._stats = stats
        self._reject_busy = reject_busy
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    @asynccontextmanager
    async def open(
        self,
        session: ChatSession | str,
        user_message: str | None,
        config: GenerationConfig,
        model: AbstractAsyncContextManager[LLMProtocol],
    ) -> AsyncIterator[Turn]:
        """The turn answering ``user_message``; None: the last turn's user message again, the
        new answer to replace that turn's when it is recorded (a regeneration)."""
        # The session is read inside its lock: a turn queued behind another sees that turn.
        session_id = _session_id(session)
        lock = self._lock(session_id)
        if self._reject_busy and lock.locked():
            raise SessionBusyError(session_id)
        async with lock:
            chat_session = await self.resolve(session)
            history = chat_session.to_chat_messages()
            regenerating = user_message is None
            if user_message is None:
                user_message = chat_session.last_turn()[0].content
                history = history[:-2]
            messages: list[ChatMessage] = [
                *history,
                {"role": Role.USER.value, "content": user_message},
            ]
            async with model as llm:
                yield Turn(
                    llm,
                    chat_session,
                    user_message,
                    messages,
                    config,
                    time.perf_counter(),
                    replaces_last=regenerating,
                )

    @asynccontextmanager
    async def exclusive(self, session_id: str) -> AsyncIterator[None]:
        """Hold the session's lock (waiting for a turn under way) to change it between turns."""
        async with self._lock(session_id):
            yield

    async def resolve(self, session: ChatSession | str) -> ChatSession:
        return await self._sessions.get(session) if isinstance(session, str) else session

    async def record(
        self,
        turn: Turn,
        completion: Completion,
        *,
        cached: bool,
        steps: Sequence[Message] = (),
    ) -> InferenceResponse:
        """Add the user message, the answer and their usage to the session, all at once
        (``steps``: tool calls and results before the answer)."""
        with turn.session.recording_turn(
            turn.user_message,
            completion.text,
            completion.token_usage,
            user_token_count=_count_tokens(turn.llm, turn.user_message),
            tool_calls=completion.tool_calls,
            steps=steps,
            replacing_last=turn.replaces_last,
        ) as (_, answer):
            # A refused save (another process saved the session first) takes the turn back.
            if await self._sessions.contains(turn.session.id):
                await self._sessions.save(turn.session)
        return self.respond(
            turn.llm,
            completion,
            turn.started,
            cached=cached,
            session_id=turn.session.id,
            message_id=answer.id,
        )

    def respond(
        self,
        llm: LLMProtocol,
        completion: Completion,
        started: float,
        *,
        cached: bool,
        session_id: str | None = None,
        message_id: str | None = None,
    ) -> InferenceResponse:
        """The response to a finished answer, counted; without a session for a stateless chat."""
        latency = time.perf_counter() - started
        self._stats.record_success(latency, completion.token_usage.completion_tokens, cached=cached)
        return InferenceResponse(
            content=completion.text,
            token_usage=completion.token_usage,
            finish_reason=completion.finish_reason,
            model=llm.model_name,
            latency=latency,
            session_id=session_id,
            message_id=message_id or uuid.uuid4().hex,
            cached=cached,
            tool_calls=completion.tool_calls,
            logprobs=completion.logprobs,
        )

    def _lock(self, session_id: str) -> asyncio.Lock:
        # Two turns on one session at once would interleave its history: run them in order
        # (asyncio.Lock wakes its waiters first come, first served).
        lock = self._locks.get(session_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[session_id] = lock
        return lock


def _count_tokens(llm: LLMProtocol, text: str) -> int | None:
    try:
        return llm.count_tokens(text)
    except GemmaChatError:
        return None


def _session_id(session: ChatSession | str) -> str:
    return session if isinstance(session, str) else session.id
