"""A conversation: its messages, system prompt, metadata and cumulative token usage."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from gemma_chat.domain.errors import InvalidMessageError, NothingToRegenerateError
from gemma_chat.domain.models.message import (
    ChatMessage,
    Message,
    Role,
    TokenUsage,
    utc_now,
    validate_text,
)
from gemma_chat.domain.models.structured import ToolCall

__all__ = ["ChatSession"]

# 2: messages may carry tool calls (assistant) and the call they answer (tool); 1 is read too.
_SCHEMA_VERSION = 2


class ChatSession:
    """The state of one conversation.

    Messages are only appended through methods that validate them first, so a session is never
    left half-written: ``record_turn`` adds a user message, its reply and their token usage
    together or not at all. Its text (title, system prompt, metadata, messages) is valid
    Unicode without NUL characters, so any store and tokenizer can take it.

    ``version`` is the repository's revision of the session this copy was read at or last
    saved as (0: never stored); a repository refuses to save a copy older than what it holds
    (``SessionConflictError``), so concurrent writers cannot overwrite each other's turns. It is
    bookkeeping, not content: equality and ``to_dict`` leave it out.
    """

    def __init__(
        self,
        title: str = "New Chat",
        *,
        system_prompt: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        id: str | None = None,
        created_at: datetime | None = None,
    ) -> None:
        if id is not None and (not isinstance(id, str) or not id):
            raise InvalidMessageError(f"A session id must be a non-empty string, got {id!r}.")
        self.id: str = id or uuid.uuid4().hex
        self.title = title
        self.created_at: datetime = created_at or utc_now()
        self.updated_at: datetime = self.created_at
        self.metadata = dict(metadata or {})
        self.version = 0
        self._system_prompt: str | None = None
        self._messages: list[Message] = []
        self._token_usage = TokenUsage()
        if system_prompt is not None:
            self.system_prompt = system_prompt

    def __repr__(self) -> str:
        return f"ChatSession(id={self.id!r}, title={self.title!r}, messages={len(self._messages)})"

    # -- state ---------------------------------------------------------------------------------

    @property
    def title(self) -> str:
        return self._title

    @title.setter
    def title(self, value: str) -> None:
        if not isinstance(value, str):
            raise InvalidMessageError(
                f"Session title must be a string, got {type(value).__name__}."
            )
        self._title = validate_text(value, what="title")

    @property
    def metadata(self) -> dict[str, Any]:
        """Free-form data of the caller's (JSON-ready); checked when set, not when mutated."""
        return self._metadata

    @metadata.setter
    def metadata(self, value: dict[str, Any]) -> None:
        _check_metadata(value, "metadata")
        self._metadata = value

    @property
    def system_prompt(self) -> str | None:
        return self._system_prompt

    @system_prompt.setter
    def system_prompt(self, value: str | None) -> None:
        if value is not None and not isinstance(value, str):
            raise InvalidMessageError(
                f"System prompt must be a string, got {type(value).__name__}."
            )
        if value is not None:
            validate_text(value, what="system_prompt")
        # An empty system prompt means "none": the model should not see an empty turn.
        self._system_prompt = value if value and value.strip() else None
        self._touch()

    @property
    def messages(self) -> tuple[Message, ...]:
        return tuple(self._messages)

    @property
    def message_count(self) -> int:
        return len(self._messages)

    @property
    def token_usage(self) -> TokenUsage:
        """Tokens used by every completed turn of this session, summed."""
        return self._token_usage

    # -- changes -------------------------------------------------------------------------------

    def add_user_message(self, content: str, token_count: int | None = None) -> Message:
        return self._append(Message(Role.USER, content, token_count=token_count))

    def add_assistant_message(
        self,
        content: str,
        token_count: int | None = None,
        token_usage: TokenUsage | None = None,
    ) -> Message:
        message = self._append(Message(Role.ASSISTANT, content, token_count=token_count))
        if token_usage is not None:
            self._token_usage += token_usage
        return message

    def last_turn(self) -> tuple[Message, Message]:
        """The last user message and the answer to it (what a regeneration replaces)."""
        if (
            len(self._messages) >= 2
            and self._messages[-2].role is Role.USER
            and self._messages[-1].role is Role.ASSISTANT
        ):
            return self._messages[-2], self._messages[-1]
        raise NothingToRegenerateError(self.id)

    def record_turn(
        self,
        user_content: str,
        assistant_content: str,
        token_usage: TokenUsage,
        *,
        user_token_count: int | None = None,
        tool_calls: Sequence[ToolCall] = (),
        steps: Sequence[Message] = (),
        replacing_last: bool = False,
    ) -> tuple[Message, Message]:
        """Append a user message, its reply and their usage together, all validated first.

        ``tool_calls``: the calls the reply makes. ``steps``: the messages between the user's
        and the reply (assistant tool calls and the tools' results) when tools were run.
        ``replacing_last``: the new turn takes the place of the last one (``last_turn``), as a
        regenerated answer does; the usage still adds up, since those tokens were generated.
        """
        user = Message(Role.USER, user_content, token_count=user_token_count)
        assistant = Message(
            Role.ASSISTANT,
            assistant_content,
            token_count=token_usage.completion_tokens,
            tool_calls=tuple(tool_calls),
        )
        for step in steps:
            if not isinstance(step, Message) or step.role not in (Role.ASSISTANT, Role.TOOL):
                raise InvalidMessageError(
                    "A turn's steps are assistant tool calls and tool results (Message values)."
                )
        if replacing_last:
            self.last_turn()
            del self._messages[-2:]
        self._messages.extend((user, *steps, assistant))
        self._token_usage += token_usage
        self._touch()
        return user, assistant

    @contextmanager
    def recording_turn(
        self,
        user_content: str,
        assistant_content: str,
        token_usage: TokenUsage,
        *,
        user_token_count: int | None = None,
        tool_calls: Sequence[ToolCall] = (),
        steps: Sequence[Message] = (),
        replacing_last: bool = False,
    ) -> Iterator[tuple[Message, Message]]:
        """``record_turn``, taken back if the block raises (a store that refused to save it):
        the session is never left with a turn its store does not have."""
        kept = (list(self._messages), self._token_usage, self.updated_at)
        turn = self.record_turn(
            user_content,
            assistant_content,
            token_usage,
            user_token_count=user_token_count,
            tool_calls=tool_calls,
            steps=steps,
            replacing_last=replacing_last,
        )
        try:
            yield turn
        except BaseException:
            self._messages, self._token_usage, self.updated_at = kept
            raise

    def update(
        self,
        *,
        title: str | None = None,
        system_prompt: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Change the title, the system prompt ("" removes it) and the metadata (replaced
        whole); None leaves one as it is. All are checked first: a bad one changes nothing."""
        draft = ChatSession(
            self.title if title is None else title,
            system_prompt=self._system_prompt if system_prompt is None else system_prompt,
            metadata=self.metadata if metadata is None else metadata,
        )
        self._title, self._system_prompt = draft.title, draft.system_prompt
        self._metadata = draft.metadata
        self._touch()

    def clear(self) -> None:
        """Forget the messages and usage; keep the id, title, system prompt and metadata."""
        self._messages.clear()
        self._token_usage = TokenUsage()
        self._touch()

    def _append(self, message: Message) -> Message:
        self._messages.append(message)
        self._touch()
        return message

    def _touch(self) -> None:
        self.updated_at = utc_now()

    # -- formats -------------------------------------------------------------------------------

    def to_chat_messages(self, *, include_system: bool = True) -> list[ChatMessage]:
        """The conversation as OpenAI-style role/content dicts, system prompt first."""
        chat: list[ChatMessage] = []
        if include_system and self._system_prompt is not None:
            chat.append({"role": Role.SYSTEM.value, "content": self._system_prompt})
        chat.extend(m.to_chat_message() for m in self._messages)
        return chat

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form that ``from_dict`` turns back into an equal session."""
        return {
            "schema_version": _SCHEMA_VERSION,
            "id": self.id,
            "title": self.title,
            "system_prompt": self._system_prompt,
            "metadata": dict(self.metadata),
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "token_usage": self._token_usage.to_dict(),
            "messages": [m.to_dict() for m in self._messages],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChatSession:
        try:
            if isinstance(data, Mapping) and data.get("schema_version", 1) > _SCHEMA_VERSION:
                raise InvalidMessageError(
                    f"A chat session stored by a newer gemma-chat (schema "
                    f"{data['schema_version']}, this one reads up to {_SCHEMA_VERSION}): "
                    "upgrade gemma-chat."
                )
            if data["id"] is None:  # would otherwise get a fresh id: the stored one is lost
                raise InvalidMessageError("A stored chat session must have an id.")
            session = cls(
                data["title"],
                system_prompt=data.get("system_prompt"),
                metadata=data.get("metadata") or {},
                id=data["id"],
                created_at=datetime.fromisoformat(data["created_at"]),
            )
            session._messages = [Message.from_dict(m) for m in data.get("messages", [])]
            usage = data.get("token_usage")
            session._token_usage = TokenUsage.from_dict(usage) if usage else TokenUsage()
            session.updated_at = datetime.fromisoformat(data["updated_at"])
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, InvalidMessageError):
                raise
            raise InvalidMessageError(f"Not a stored chat session: {exc!r}.") from exc
        return session

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ChatSession):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable


def _check_metadata(value: object, where: str) -> None:
    """Every string in metadata, keys too, at any depth: valid Unicode without NUL."""
    if isinstance(value, str):
        validate_text(value, what=where)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str):
                # !a: the message must not carry the bad text it complains about
                validate_text(key, what=f"{where} key {key!a}")
            _check_metadata(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_metadata(item, f"{where}[{index}]")
