"""Server-sent events as OpenAI streams them."""

from __future__ import annotations

import json
from typing import Any

from gemma_chat.domain.models import FinishReason

__all__ = ["DONE", "error_event", "event", "finish_name"]

DONE = "data: [DONE]\n\n"


def event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def error_event(exc: Exception) -> str:
    """An error after the stream started: the status line is sent already."""
    return event({"error": {"message": str(exc), "type": "invalid_request_error"}})


def finish_name(reason: FinishReason | None) -> str:
    """OpenAI knows stop and length; a cancelled stream has no reader left to tell."""
    return "length" if reason is FinishReason.LENGTH else "stop"
