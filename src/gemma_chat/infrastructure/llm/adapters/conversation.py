"""A conversation checked before it is formatted, and fitted into the context window (the
oldest turns dropped when ``GEMMA_MODEL__TRUNCATE_HISTORY`` allows it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gemma_chat.domain.errors import ContextLengthExceededError, InvalidMessageError
from gemma_chat.domain.models import ChatMessage, Role
from gemma_chat.domain.models.message import validate_content
from gemma_chat.domain.models.structured import tool_calls_from_openai

__all__ = ["PromptFormatter", "fit_to_context", "validated_messages"]


class PromptFormatter(Protocol):
    """What fitting a conversation needs from an adapter."""

    def format_prompt(self, messages: Sequence[ChatMessage]) -> str: ...

    def count_tokens(self, text: str) -> int: ...

    @property
    def context_length(self) -> int | None: ...


def fit_to_context(
    llm: PromptFormatter, chat: list[ChatMessage], max_new_tokens: int, *, truncate: bool
) -> tuple[str, int, list[ChatMessage]]:
    """(prompt, its tokens, the messages it holds) for ``chat`` within ``llm``'s context window;
    ``ContextLengthExceededError`` when even the newest message alone does not fit."""
    prompt = llm.format_prompt(chat)
    prompt_tokens = llm.count_tokens(prompt)
    limit = llm.context_length
    if limit is None or prompt_tokens + max_new_tokens <= limit:
        return prompt, prompt_tokens, chat
    if truncate:
        system = [m for m in chat[:1] if m["role"] == Role.SYSTEM.value]
        turns = chat[len(system) :]
        # Drop the oldest messages, keeping the system prompt and the newest message.
        while len(turns) > 1:
            turns = turns[1:]
            while len(turns) > 1 and turns[0]["role"] != Role.USER.value:
                turns = turns[1:]
            prompt = llm.format_prompt(system + turns)
            prompt_tokens = llm.count_tokens(prompt)
            if prompt_tokens + max_new_tokens <= limit:
                return prompt, prompt_tokens, system + turns
    raise ContextLengthExceededError(
        prompt_tokens=prompt_tokens,
        max_new_tokens=max_new_tokens,
        context_length=limit,
    )


def validated_messages(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """``messages`` as a list of {role, content} with valid roles and contents (an assistant's
    may carry ``tool_calls``, a tool's result its ``tool_call_id``)."""
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise InvalidMessageError("messages must be a list of {'role', 'content'} dicts.")
    if not messages:
        raise InvalidMessageError("messages must not be empty.")
    chat: list[ChatMessage] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) - _KEYS:
            raise InvalidMessageError(
                f"messages[{index}] must be a dict with 'role' and 'content', got {message!r:.80}."
            )
        role = Role.parse(message.get("role"))
        content = validate_content(
            message.get("content"),
            what=f"messages[{index}].content",
            model_output=role in (Role.ASSISTANT, Role.TOOL),
        )
        checked: ChatMessage = {"role": role.value, "content": content}
        calls = message.get("tool_calls")
        if calls:
            where = f"messages[{index}].tool_calls"
            if role is not Role.ASSISTANT:
                raise InvalidMessageError(f"{where}: only an assistant message has tool calls.")
            checked["tool_calls"] = [
                c.to_openai() for c in tool_calls_from_openai(calls, where=where)
            ]
        if role is Role.TOOL:
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise InvalidMessageError(
                    f"messages[{index}].tool_call_id: a tool message names the call it answers."
                )
            checked["tool_call_id"] = call_id
        chat.append(checked)
    return chat


_KEYS = {"role", "content", "tool_calls", "tool_call_id"}
