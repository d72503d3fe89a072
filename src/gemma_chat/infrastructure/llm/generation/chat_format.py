"""Prompt formats for models without a chat template.

- ``gemma``: Gemma's turn format (``<start_of_turn>user … <end_of_turn>``), for instruction-tuned
  Gemma models. Gemma has no system role: the system prompt is folded into the first user turn,
  as Google's own template does.
- ``transcript``: a plain ``User:`` / ``Assistant:`` transcript, for base (pretrained) models.
  The embedded Gemma 3 270M is such a model: its turn tokens were never trained, and with the
  turn format it only echoes the prompt, while it answers sensibly in a transcript.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gemma_chat.domain.errors import ConfigurationError
from gemma_chat.domain.models import ChatMessage, Role

__all__ = [
    "END_OF_TURN",
    "GEMMA_TURNS",
    "START_OF_TURN",
    "TRANSCRIPT",
    "ChatFormat",
    "choose_chat_format",
]

START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"
DEFAULT_PREAMBLE = "The following is a conversation between a user and a helpful assistant."


@dataclass(frozen=True, slots=True)
class ChatFormat:
    name: str
    render: Callable[[Sequence[ChatMessage], str], str]  # (messages, bos token) -> prompt
    stop: tuple[str, ...] = ()  # text that ends the answer, besides the end-of-turn tokens
    strip_leading_space: bool = False  # the answer follows "Assistant:" and starts with " "


def _split_system(messages: Sequence[ChatMessage]) -> tuple[str, list[ChatMessage]]:
    system = "\n\n".join(m["content"] for m in messages if m["role"] == Role.SYSTEM.value)
    return system, [m for m in messages if m["role"] != Role.SYSTEM.value]


def _render_gemma(messages: Sequence[ChatMessage], bos: str) -> str:
    system, turns = _split_system(messages)
    parts = [bos]
    for message in turns:
        role = "model" if message["role"] == Role.ASSISTANT.value else "user"
        content = message["content"].strip()
        if role == "user" and system:
            content, system = f"{system}\n\n{content}", ""
        parts.append(f"{START_OF_TURN}{role}\n{content}{END_OF_TURN}\n")
    if system:  # a system prompt and no user turn yet
        parts.append(f"{START_OF_TURN}user\n{system}{END_OF_TURN}\n")
    parts.append(f"{START_OF_TURN}model\n")
    return "".join(parts)


def _render_transcript(messages: Sequence[ChatMessage], bos: str) -> str:
    system, turns = _split_system(messages)
    lines = [f"{bos}{system or DEFAULT_PREAMBLE}\n"]
    for message in turns:
        speaker = "Assistant" if message["role"] == Role.ASSISTANT.value else "User"
        lines.append(f"\n{speaker}: {message['content'].strip()}")
    lines.append("\nAssistant:")
    return "".join(lines)


GEMMA_TURNS = ChatFormat("gemma", _render_gemma)
TRANSCRIPT = ChatFormat(
    "transcript",
    _render_transcript,
    stop=("\n\nUser:", "\nUser:", "\n\nAssistant:", "\nAssistant:"),
    strip_leading_space=True,
)
CHAT_FORMATS = {f.name: f for f in (GEMMA_TURNS, TRANSCRIPT)}

_INSTRUCTION_TUNED = re.compile(r"(?:^|[-_./ ])(it|instruct|chat)(?:$|[-_./ ])", re.IGNORECASE)
_PRETRAINED = re.compile(r"(?:^|[-_./ ])(pt|pretrained)(?:$|[-_./ ])", re.IGNORECASE)


def choose_chat_format(setting: str, *, has_template: bool, model_name: str) -> ChatFormat | None:
    """The format to use, or None for the tokenizer's own chat template.

    ``auto`` takes the template when there is one, else Gemma turns for instruction-tuned models
    (``-it``, ``instruct`` or ``chat`` in the name) and the transcript for base models. A model
    named pretrained (``-pt``: Google ships its base Gemma checkpoints with the chat template
    too) keeps the transcript: its turn tokens were never trained.
    """
    pretrained = _PRETRAINED.search(model_name) and not _INSTRUCTION_TUNED.search(model_name)
    if setting == "auto" and has_template and pretrained:
        return TRANSCRIPT
    if setting == "template" or (setting == "auto" and has_template):
        if not has_template:
            raise ConfigurationError(
                f"GEMMA_MODEL__CHAT_FORMAT=template, but {model_name!r} has no chat template: "
                "use auto, gemma or transcript."
            )
        return None
    if setting == "auto":
        return GEMMA_TURNS if _INSTRUCTION_TUNED.search(model_name) else TRANSCRIPT
    try:
        return CHAT_FORMATS[setting]
    except KeyError:
        raise ConfigurationError(
            f"GEMMA_MODEL__CHAT_FORMAT={setting!r}: use auto, template, gemma or transcript."
        ) from None
