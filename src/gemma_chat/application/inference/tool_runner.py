"""Running the tools a model called: each call's result as a tool message.

A tool is a Python callable (sync ones run on a worker thread); its arguments are validated
against its signature (pydantic's ``validate_call``), it runs within a time limit, and whatever
goes wrong (bad arguments, an exception, the time limit, a tool that does not exist) becomes its
result's text, for the model to read, never an error of the turn.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, validate_call
from pydantic import ValidationError as PydanticValidationError

from gemma_chat.domain.models import Message, Role, ToolCall

__all__ = ["run_tool_calls"]


async def run_tool_calls(
    calls: Sequence[ToolCall],
    functions: Mapping[str, Callable[..., Any]],
    *,
    time_limit: float,
) -> list[Message]:
    """One tool message per call, in the calls' order (the calls run concurrently)."""
    results = await asyncio.gather(*(_run(call, functions, time_limit) for call in calls))
    return [
        Message(Role.TOOL, result, tool_call_id=call.id)
        for call, result in zip(calls, results, strict=True)
    ]


async def _run(
    call: ToolCall, functions: Mapping[str, Callable[..., Any]], time_limit: float
) -> str:
    function = functions.get(call.name)
    if function is None:
        return f"Error: there is no tool named {call.name!r}."
    try:
        arguments = json.loads(call.arguments)
    except ValueError as exc:
        return f"Error: the arguments are not JSON ({exc})."
    if not isinstance(arguments, dict):
        return "Error: the arguments must be a JSON object."
    checked = validate_call(function)
    try:
        async with asyncio.timeout(time_limit):
            if inspect.iscoroutinefunction(function):
                result = await checked(**arguments)
            else:
                result = await asyncio.to_thread(checked, **arguments)
    except TimeoutError:
        return f"Error: the tool {call.name!r} did not answer within {time_limit:g} s."
    except PydanticValidationError as exc:
        return f"Error: invalid arguments for {call.name!r}: {exc}"
    except Exception as exc:  # the tool's own failure is its result, for the model to read
        return f"Error: {type(exc).__name__}: {exc}"
    return _text(result)


def _text(result: object) -> str:
    if isinstance(result, str):
        return result
    if isinstance(result, BaseModel):
        return result.model_dump_json()
    try:
        return json.dumps(result, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(result)
