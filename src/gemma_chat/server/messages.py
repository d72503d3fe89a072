"""OpenAI's message shapes (Chat Completions' ``messages``, the Responses API's ``input``) as the
service takes a conversation. Every refusal is a 400 naming the field as the client wrote it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gemma_chat.server.errors import APIError
from gemma_chat.server.protocol import ChatMessageIn, ContentPart, GenerationRequest
from gemma_chat.shared.config import LimitsSettings

__all__ = [
    "chat_conversation",
    "choices_allowed",
    "refuse",
    "refuse_unsupported",
    "responses_conversation",
    "text_of",
]


def refuse(message: str, param: str | None) -> APIError:
    return APIError(400, message, kind="invalid_request_error", param=param)


def refuse_unsupported(request: GenerationRequest) -> None:
    """A field set to a value this server cannot honour is a 400 naming it, never ignored."""
    unsupported = request.unsupported_value()
    if unsupported is not None:
        field, reason = unsupported
        raise refuse(reason, field)


def choices_allowed(n: int, limits: LimitsSettings) -> None:
    if not 1 <= n <= limits.max_choices:
        raise refuse(
            f"n={n}; this server generates 1 to {limits.max_choices} choices per request "
            "(GEMMA_LIMITS__MAX_CHOICES).",
            "n",
        )


def text_of(
    content: str | Sequence[ContentPart | dict[str, Any]] | None,
    param: str,
    text_types: tuple[str, ...] = ("text",),
) -> str:
    """A message's text: the string, or its text parts joined (as OpenAI reads them)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    pieces: list[str] = []
    for index, part in enumerate(content):
        fields = part.model_dump() if isinstance(part, ContentPart) else part
        kind = fields.get("type")
        if kind not in text_types:
            raise refuse(
                f"{param}[{index}] is a content part of type {kind!r}; this model reads text "
                f"only (parts of type {', '.join(repr(t) for t in text_types)}).",
                f"{param}[{index}].type",
            )
        text = fields.get("text")
        if not isinstance(text, str):
            raise refuse(f"{param}[{index}] has no text.", f"{param}[{index}].text")
        pieces.append(text)
    return "".join(pieces)


def _check_sizes(count: int, texts: list[tuple[str, str]], limits: LimitsSettings) -> None:
    if count > limits.max_messages:
        raise refuse(
            f"{count} messages; the limit is {limits.max_messages} (GEMMA_LIMITS__MAX_MESSAGES).",
            "messages",
        )
    for param, text in texts:
        if len(text) > limits.max_message_chars:
            raise refuse(
                f"{param} has {len(text)} characters; the limit is "
                f"{limits.max_message_chars} (GEMMA_LIMITS__MAX_MESSAGE_CHARS).",
                param,
            )


def chat_conversation(
    messages: Sequence[ChatMessageIn], limits: LimitsSettings
) -> list[dict[str, Any]]:
    """Chat Completions' ``messages`` as the service takes them (``developer`` is OpenAI's newer
    name for ``system``). The service validates them all; the checks here come first because
    their errors name OpenAI's ``param`` (the library's errors carry no field path)."""
    conversation: list[dict[str, Any]] = []
    texts: list[tuple[str, str]] = []
    for index, message in enumerate(messages):
        param = f"messages[{index}].content"
        text = text_of(message.content, param)
        texts.append((param, text))
        role = "system" if message.role == "developer" else message.role
        entry: dict[str, Any] = {"role": role, "content": text}
        if message.tool_calls:
            if role != "assistant":
                raise refuse(
                    f"messages[{index}] has tool_calls; only assistant messages make calls.",
                    f"messages[{index}].tool_calls",
                )
            entry["tool_calls"] = [call.model_dump() for call in message.tool_calls]
        elif message.content is None:
            raise refuse(
                f"messages[{index}] has no content (null is allowed only on an assistant "
                "message with tool_calls).",
                param,
            )
        if role == "tool":
            if message.tool_call_id is None:
                raise refuse(
                    f"messages[{index}] is a tool result without tool_call_id.",
                    f"messages[{index}].tool_call_id",
                )
            entry["tool_call_id"] = message.tool_call_id
        elif message.tool_call_id is not None:
            raise refuse(
                f"messages[{index}] has tool_call_id; only tool messages answer a call.",
                f"messages[{index}].tool_call_id",
            )
        conversation.append(entry)
    _check_sizes(len(messages), texts, limits)
    if conversation[-1]["role"] not in ("user", "tool"):
        raise refuse(
            "The last message must have role 'user' (or 'tool', a tool's result): it is the one "
            "the model answers.",
            "messages",
        )
    return conversation


_INPUT_TEXT = ("input_text", "output_text", "text")


def responses_conversation(
    items: str | list[dict[str, Any]], instructions: str | None, limits: LimitsSettings
) -> list[dict[str, Any]]:
    """The Responses API's ``instructions`` and ``input`` as a conversation."""
    conversation: list[dict[str, Any]] = []
    texts: list[tuple[str, str]] = []
    if instructions:
        conversation.append({"role": "system", "content": instructions})
        texts.append(("instructions", instructions))
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    if not items:
        raise refuse("input is empty: send a string or at least one message.", "input")
    for index, item in enumerate(items):
        where = f"input[{index}]"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise refuse(f"{where} has role {role!r}.", f"{where}.role")
            text = text_of(item.get("content"), f"{where}.content", _INPUT_TEXT)
            texts.append((f"{where}.content", text))
            role = "system" if role == "developer" else role
            conversation.append({"role": role, "content": text})
        elif kind == "function_call":
            function = {
                "name": _string(item, "name", where),
                "arguments": _string(item, "arguments", where),
            }
            call = {"id": _string(item, "call_id", where), "type": "function", "function": function}
            previous = conversation[-1] if conversation else None
            if previous is not None and previous["role"] == "assistant":
                previous.setdefault("tool_calls", []).append(call)
            else:
                conversation.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            text = text_of(output, f"{where}.output", _INPUT_TEXT)
            texts.append((f"{where}.output", text))
            call_id = _string(item, "call_id", where)
            conversation.append({"role": "tool", "content": text, "tool_call_id": call_id})
        else:
            raise refuse(
                f"{where} is an item of type {kind!r}; this server reads messages, "
                "function_call and function_call_output items.",
                f"{where}.type",
            )
    _check_sizes(len(conversation), texts, limits)
    if conversation[-1]["role"] not in ("user", "tool"):
        raise refuse(
            "The last input item must be a user message or a function_call_output: it is the "
            "one the model answers.",
            "input",
        )
    return conversation


def _string(item: dict[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise refuse(f"{where}.{key} must be a string.", f"{where}.{key}")
    return value
