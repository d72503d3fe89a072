"""What a request may ask: its text and messages checked, its generation config within the
limits of ``GEMMA_LIMITS__*``. Everything here runs before the request waits for anything."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gemma_chat.domain.errors import (
    InvalidGenerationConfigError,
    InvalidMessageError,
    ServiceStateError,
)
from gemma_chat.domain.models import ChatMessage, ChatSession, GenerationConfig, Role
from gemma_chat.domain.models.message import validate_content
from gemma_chat.domain.models.structured import tool_calls_from_openai
from gemma_chat.shared.config import Settings

__all__ = ["RequestPolicy"]


class RequestPolicy:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def default_generation_config(self) -> GenerationConfig:
        """The generation parameters of a request that overrides nothing (from settings)."""
        m = self.settings.model
        return GenerationConfig(
            temperature=m.temperature,
            top_p=m.top_p,
            top_k=m.top_k,
            max_new_tokens=m.max_new_tokens,
            seed=m.seed,
            repetition_penalty=m.repetition_penalty,
        )

    def turn(
        self,
        session: ChatSession | str,
        user_message: str,
        temperature: float | None,
        overrides: Mapping[str, Any],
    ) -> GenerationConfig:
        """A turn on a session: the session's type, the user message and the config."""
        _check_session(session)
        return self.text(user_message, "user_message", temperature, overrides)

    def regeneration(
        self, session: ChatSession | str, temperature: float | None, overrides: Mapping[str, Any]
    ) -> GenerationConfig:
        """A new answer to a session's last user message (checked when it was sent)."""
        _check_session(session)
        return self.generation_config(temperature, overrides)

    def text(
        self, text: str, what: str, temperature: float | None, overrides: Mapping[str, Any]
    ) -> GenerationConfig:
        """A request of one text (``what`` names it in errors), and its generation config."""
        validate_content(text, what=what)
        self._check_length(text, what)
        return self.generation_config(temperature, overrides)

    def chat(
        self,
        messages: Sequence[ChatMessage],
        temperature: float | None,
        overrides: Mapping[str, Any],
    ) -> tuple[list[ChatMessage], GenerationConfig]:
        """A stateless chat's conversation, validated and in the shape a session gives (the
        system messages joined into one, first), and its generation config."""
        if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
            raise InvalidMessageError(
                "messages must be a list of {'role': ..., 'content': ...} dicts, got "
                f"{type(messages).__name__}."
            )
        if not messages:
            raise InvalidMessageError("messages must not be empty: the last one is answered.")
        limit = self.settings.limits.max_messages
        if len(messages) > limit:
            raise InvalidMessageError(
                f"{len(messages)} messages; the limit is {limit} (GEMMA_LIMITS__MAX_MESSAGES)."
            )
        system: list[str] = []
        turns: list[ChatMessage] = []
        for index, message in enumerate(messages):
            role, content = self._chat_message(message, index)
            if role is Role.SYSTEM:
                system.append(content)
            else:
                turns.append(_with_tool_fields({"role": role.value, "content": content}, message))
        if role not in (Role.USER, Role.TOOL):
            raise InvalidMessageError(
                f"messages[{len(messages) - 1}].role must be 'user' (or 'tool', a tool's result): "
                "the last message is the one answered."
            )
        prompt = "\n\n".join(system)
        # As a session's system prompt: a blank one is none.
        head: list[ChatMessage] = (
            [{"role": Role.SYSTEM.value, "content": prompt}] if prompt.strip() else []
        )
        return [*head, *turns], self.generation_config(temperature, overrides)

    def generation_config(
        self, temperature: float | None, overrides: Mapping[str, Any]
    ) -> GenerationConfig:
        """The request's generation config, within GEMMA_LIMITS__*."""
        limits = self.settings.limits
        config = self.default_generation_config().with_overrides(
            temperature=temperature, **overrides
        )
        if overrides.get("max_new_tokens") is None and config.max_new_tokens > limits.max_tokens:
            # The settings' default may exceed the limit; only an explicit ask is an error.
            config = config.with_overrides(max_new_tokens=limits.max_tokens)
        if config.max_new_tokens > limits.max_tokens:
            raise InvalidGenerationConfigError(
                f"max_new_tokens={config.max_new_tokens} is over the limit of "
                f"{limits.max_tokens} (GEMMA_LIMITS__MAX_TOKENS)."
            )
        if len(config.stop) > limits.max_stop_sequences:
            raise InvalidGenerationConfigError(
                f"{len(config.stop)} stop sequences; the limit is {limits.max_stop_sequences} "
                "(GEMMA_LIMITS__MAX_STOP_SEQUENCES)."
            )
        return config

    def _chat_message(self, message: object, index: int) -> tuple[Role, str]:
        if not isinstance(message, Mapping):
            raise InvalidMessageError(
                f"messages[{index}] must be a {{'role': ..., 'content': ...}} dict, got "
                f"{type(message).__name__}."
            )
        try:
            role = Role.parse(message.get("role"))
        except InvalidMessageError as exc:
            raise InvalidMessageError(f"messages[{index}].role: {exc}") from None
        what = f"messages[{index}].content"
        content = message.get("content")
        if content is None and role is Role.ASSISTANT and message.get("tool_calls"):
            content = ""  # OpenAI's assistant message that only calls tools
        # A system prompt may be blank (then there is none), and what a model wrote is taken as
        # it was: as a session takes them.
        content = validate_content(content, what=what, model_output=role is not Role.USER)
        self._check_length(content, what)
        return role, content

    def _check_length(self, text: str, what: str) -> None:
        limit = self.settings.limits.max_message_chars
        if len(text) > limit:
            raise InvalidMessageError(
                f"{what} has {len(text)} characters; the limit is {limit} "
                "(GEMMA_LIMITS__MAX_MESSAGE_CHARS).",
                field=what,
            )


def _with_tool_fields(checked: ChatMessage, message: Mapping[str, Any]) -> ChatMessage:
    """``checked`` with the message's tool calls (an assistant's) or the call it answers (a
    tool's), validated: unknown keys elsewhere stay the adapters' concern."""
    index_role = checked["role"]
    calls = message.get("tool_calls")
    if calls:
        if index_role != Role.ASSISTANT.value:
            raise InvalidMessageError("Only an assistant message has tool_calls.")
        checked["tool_calls"] = [
            c.to_openai() for c in tool_calls_from_openai(calls, where="tool_calls")
        ]
    if index_role == Role.TOOL.value:
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise InvalidMessageError(
                "A tool message needs the tool_call_id of the call it answers.",
                field="tool_call_id",
            )
        checked["tool_call_id"] = call_id
    return checked


def _check_session(session: object) -> None:
    if not isinstance(session, ChatSession | str):
        raise ServiceStateError(
            f"session must be a ChatSession or a session id, got {type(session).__name__}."
        )
