"""The weather tool and the messages of a tool loop, shared by the tests of the OpenAI surface
(a fake model: tests/unit) and of agent frameworks (the embedded model: tests/e2e)."""

from __future__ import annotations

from typing import Any

__all__ = ["WEATHER_ARGUMENTS", "WEATHER_TOOL", "responses_tool", "tool_loop_messages"]

WEATHER_ARGUMENTS = '{"city": "Paris"}'
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def responses_tool() -> Any:
    """The weather tool as the Responses API takes it (the function's fields at top level)."""
    return {"type": "function", **WEATHER_TOOL["function"]}


def tool_loop_messages(question: list[Any], result: str = "sunny, 24 C") -> Any:
    """``question``, then the assistant's call of the weather tool (id ``call_1``) and the
    tool's ``result``: the messages of a turn that continues after a tool call."""
    return [
        *question,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": WEATHER_ARGUMENTS},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": result},
    ]
