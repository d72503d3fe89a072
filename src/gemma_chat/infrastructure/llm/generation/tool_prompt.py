"""Tool calling for models without tool tokens (Gemma): a prompt format and its grammar.

The format (README.md, "Tools"):

- the tools are described at the end of the system turn, each with its JSON schema, with the
  instruction to answer a call as a fenced block::

      ```tool_call
      {"name": "get_weather", "arguments": {"city": "Paris"}}
      ```

- an assistant message that called tools is shown as its text followed by its blocks;
- a tool's result is shown as a user turn holding a ``tool_result`` block
  (``{"id": ..., "name": ..., "content": ...}``).

With ``tool_choice`` ``required`` or a tool's name the answer is forced, by grammar, to be such a
block (for the named tool only); with ``auto`` the grammar allows either text that
does not start a block, or blocks. The blocks are parsed back into ``ToolCall`` values, and never
reach the answer's text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from gemma_chat.domain.errors import InvalidSchemaError
from gemma_chat.domain.models import (
    ChatMessage,
    ResponseFormat,
    ResponseFormatKind,
    Role,
    ToolCall,
    ToolChoiceMode,
    ToolDefinition,
)

__all__ = [
    "CALL_FENCE",
    "ToolCallFilter",
    "call_block",
    "parse_tool_calls",
    "reason",
    "render_tool_conversation",
    "tool_grammar",
]

CALL_FENCE = "```tool_call\n"
RESULT_FENCE = "```tool_result\n"
_CLOSE = "\n```"
_BLOCK = re.compile(r"```tool_call\s*\n(.*?)\n?```", re.DOTALL)


def _describe(tools: Sequence[ToolDefinition], mode: ToolChoiceMode, name: str | None) -> str:
    lines = [
        "To call a tool, answer with only this block:",
        f"{CALL_FENCE}" + '{"name": "<tool>", "arguments": {...}}' + _CLOSE,
        "Its result comes back in a tool_result block.",
    ]
    if mode is ToolChoiceMode.REQUIRED:
        lines.append("Call at least one tool now.")
    elif mode is ToolChoiceMode.NAMED:
        lines.append(f"Call the tool {name} now.")
    lines.append("Tools:")
    for tool in tools:
        description = f": {tool.description}" if tool.description else ""
        lines.append(
            f"- {tool.name}{description} Arguments (JSON schema): "
            f"{json.dumps(dict(tool.parameters), ensure_ascii=False)}"
        )
    return "\n".join(lines)


def call_block(call: ToolCall) -> str:
    """The fenced block a model writes to make ``call``."""
    try:
        arguments = json.loads(call.arguments)
    except ValueError:
        arguments = call.arguments
    body = json.dumps({"name": call.name, "arguments": arguments}, ensure_ascii=False)
    return f"{CALL_FENCE}{body}{_CLOSE}"


def render_tool_conversation(
    messages: Sequence[ChatMessage],
    tools: Sequence[ToolDefinition],
    mode: ToolChoiceMode,
    name: str | None = None,
) -> list[ChatMessage]:
    """``messages`` as plain role/content messages a chat format renders: the tools described
    in the system turn (unless ``mode`` is ``none``), calls and results as fenced blocks."""
    out: list[ChatMessage] = []
    for message in messages:
        role, content = message["role"], message["content"]
        if role == Role.ASSISTANT.value and message.get("tool_calls"):
            calls = [ToolCall.from_openai(c) for c in message.get("tool_calls", [])]
            blocks = "\n".join(call_block(c) for c in calls)
            out.append({"role": role, "content": f"{content}\n{blocks}" if content else blocks})
        elif role == Role.TOOL.value:
            result = {"id": message.get("tool_call_id"), "content": content}
            body = json.dumps(result, ensure_ascii=False)
            out.append({"role": Role.USER.value, "content": f"{RESULT_FENCE}{body}{_CLOSE}"})
        else:
            out.append({"role": role, "content": content})
    if tools and mode is not ToolChoiceMode.NONE:
        described = _describe(tools, mode, name)
        if out and out[0]["role"] == Role.SYSTEM.value:
            out[0] = {"role": Role.SYSTEM.value, "content": f"{out[0]['content']}\n\n{described}"}
        else:
            out.insert(0, {"role": Role.SYSTEM.value, "content": described})
    return out


def parse_tool_calls(
    text: str, tools: Sequence[ToolDefinition]
) -> tuple[str, tuple[ToolCall, ...]]:
    """The text before the first call block, and the calls of the blocks that name an offered
    tool with a JSON object of arguments (others stay text)."""
    names = {t.name for t in tools}
    calls: list[ToolCall] = []
    first = None
    for block in _BLOCK.finditer(text):
        try:
            data = json.loads(block.group(1))
        except ValueError:
            continue
        if not isinstance(data, dict) or data.get("name") not in names:
            continue
        arguments = data.get("arguments", {})
        if not isinstance(arguments, dict):
            continue
        calls.append(ToolCall(data["name"], json.dumps(arguments, ensure_ascii=False)))
        first = block.start() if first is None else first
    if not calls:
        return text, ()
    assert first is not None
    return text[:first].rstrip(), tuple(calls)


class ToolCallFilter:
    """Streams an answer's text while holding back what may be a call block: ``push`` returns
    the text safe to show; ``finish`` the rest of the text and the calls."""

    def __init__(self, tools: Sequence[ToolDefinition]) -> None:
        self._tools = tools
        self._text: list[str] = []
        self._released = 0
        self._in_block = False

    def push(self, delta: str) -> str:
        self._text.append(delta)
        if self._in_block:
            return ""
        text = "".join(self._text)
        start = text.find("```tool_call", self._released)
        if start >= 0:
            self._in_block = True
            released, self._released = text[self._released : start], start
            return released
        # Keep back a tail that could be the start of a block's fence.
        keep = _partial_fence(text)
        end = len(text) - keep
        released = text[self._released : end] if end > self._released else ""
        self._released = max(self._released, end)
        return released

    def finish(self) -> tuple[str, tuple[ToolCall, ...]]:
        """The text not yet released (without call blocks) and the calls."""
        text = "".join(self._text)
        _, calls = parse_tool_calls(text, self._tools)
        rest = text[self._released :]
        if calls:
            return "", calls
        return rest, ()


def _partial_fence(text: str) -> int:
    fence = "```tool_call"
    for size in range(min(len(fence) - 1, len(text)), 0, -1):
        if text.endswith(fence[:size]):
            return size
    return 0


def tool_grammar(
    tools: Sequence[ToolDefinition],
    mode: ToolChoiceMode,
    name: str | None = None,
    text_format: ResponseFormat | None = None,
) -> ResponseFormat | None:
    """The grammar an answer follows with these tools: a call block whose JSON validates
    against one tool's schema (``required``; the named tool's), or that or text (``auto``; the
    text as ``text_format`` says, if given)."""
    if mode is ToolChoiceMode.NONE or not tools:
        return text_format
    try:
        return _tool_grammar(tools, mode, name, text_format)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise InvalidSchemaError(
            f"The tools' schemas (or the response format) do not compile: {reason(exc)}",
            field="tools",
        ) from None


def _tool_grammar(
    tools: Sequence[ToolDefinition],
    mode: ToolChoiceMode,
    name: str | None,
    text_format: ResponseFormat | None,
) -> ResponseFormat:
    import xgrammar as xgr

    chosen = [t for t in tools if mode is not ToolChoiceMode.NAMED or t.name == name]
    schema = {
        "anyOf": [
            {
                "type": "object",
                "properties": {"name": {"const": t.name}, "arguments": dict(t.parameters)},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for t in chosen
        ]
    }
    body = xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False)
    call = xgr.Grammar.concat(
        xgr.Grammar.from_ebnf(f"root ::= {json.dumps(CALL_FENCE)}"),
        body,
        xgr.Grammar.from_ebnf(f"root ::= {json.dumps(_CLOSE)}"),
    )
    if mode is ToolChoiceMode.AUTO:
        text = (
            _grammar_of(text_format)
            if text_format is not None
            else xgr.Grammar.from_ebnf(r"root ::= [^`] [^\0]*")
        )
        call = xgr.Grammar.union(call, text)
    return ResponseFormat(ResponseFormatKind.GRAMMAR, grammar=str(call))


def _grammar_of(fmt: ResponseFormat) -> Any:
    import xgrammar as xgr

    kind = fmt.kind
    if kind is ResponseFormatKind.JSON_SCHEMA:
        return xgr.Grammar.from_json_schema(
            json.dumps(fmt.schema), any_whitespace=False, strict_mode=fmt.strict
        )
    if kind is ResponseFormatKind.JSON_OBJECT:
        return xgr.Grammar.from_json_schema(json.dumps({"type": "object"}), any_whitespace=False)
    if kind is ResponseFormatKind.REGEX:
        return xgr.Grammar.from_regex(str(fmt.pattern))
    if kind is ResponseFormatKind.CHOICE:
        return xgr.Grammar.from_ebnf("root ::= " + " | ".join(json.dumps(c) for c in fmt.choices))
    return xgr.Grammar.from_ebnf(str(fmt.grammar))


# xgrammar prefixes its messages with a time and its source file.
_LOCATION = re.compile(r"^\[[\d:]+\] \S+:\d+: ")


def reason(exc: BaseException) -> str:
    """xgrammar's message of ``exc``, without its time and source location."""
    text = _LOCATION.sub("", str(exc).strip()) or type(exc).__name__
    return text.splitlines()[0] if len(text) > 500 else text
