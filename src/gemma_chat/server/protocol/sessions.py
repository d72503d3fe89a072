"""``/v1/sessions``: requests, responses and stream chunks."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gemma_chat.domain.models import ChatSession
from gemma_chat.server.protocol.common import ChatGenerationRequest, FinishName, UsageInfo
from gemma_chat.server.protocol.openai import DeltaMessage

__all__ = [
    "SessionChunk",
    "SessionCreate",
    "SessionDeleted",
    "SessionDetail",
    "SessionFinalChunk",
    "SessionList",
    "SessionMessage",
    "SessionMessageRequest",
    "SessionMessageResponse",
    "SessionRegenerateRequest",
    "SessionReply",
    "SessionSummary",
    "SessionUpdate",
]


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = "New Chat"
    system_prompt: str | None = None
    metadata: dict[str, object] = Field(default_factory=dict)


class SessionUpdate(BaseModel):
    """What a PATCH changes; a field left out stays as it is."""

    model_config = ConfigDict(extra="forbid", strict=True)

    title: str | None = None
    system_prompt: str | None = Field(None, description='"" removes the system prompt.')
    metadata: dict[str, object] | None = Field(None, description="Replaces the metadata whole.")


class SessionMessageRequest(ChatGenerationRequest):
    model_config = ConfigDict(extra="forbid")

    content: str


class SessionRegenerateRequest(ChatGenerationRequest):
    """A new answer to the last user message; the generation parameters as for a message."""

    model_config = ConfigDict(extra="forbid")


class SessionSummary(BaseModel):
    id: str
    object: Literal["chat.session"] = "chat.session"
    title: str
    system_prompt: str | None
    metadata: dict[str, Any]
    created_at: str  # ISO 8601, as datetime.isoformat() writes it
    updated_at: str
    message_count: int
    token_usage: UsageInfo

    @classmethod
    def of(cls, session: ChatSession) -> SessionSummary:
        return cls(**_summary_fields(session))


class SessionMessage(BaseModel):
    id: str
    role: str
    content: str
    created_at: str
    token_count: int | None


class SessionDetail(SessionSummary):
    messages: list[SessionMessage]

    @classmethod
    def of(cls, session: ChatSession) -> SessionDetail:
        messages = [
            SessionMessage(
                id=m.id,
                role=m.role.value,
                content=m.content,
                created_at=m.created_at.isoformat(),
                token_count=m.token_count,
            )
            for m in session.messages
        ]
        return cls(**_summary_fields(session), messages=messages)


def _summary_fields(session: ChatSession) -> dict[str, Any]:
    return {
        "id": session.id,
        "title": session.title,
        "system_prompt": session.system_prompt,
        "metadata": session.metadata,
        "created_at": session.created_at.isoformat(),
        "updated_at": session.updated_at.isoformat(),
        "message_count": session.message_count,
        "token_usage": UsageInfo.of(session.token_usage),
    }


class SessionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[SessionSummary]


class SessionDeleted(BaseModel):
    id: str
    object: Literal["chat.session.deleted"] = "chat.session.deleted"
    deleted: Literal[True] = True


class SessionReply(BaseModel):
    id: str
    role: Literal["assistant"] = "assistant"
    content: str
    token_count: int


class SessionMessageResponse(BaseModel):
    object: Literal["chat.session.message"] = "chat.session.message"
    session_id: str
    message: SessionReply
    finish_reason: FinishName
    usage: UsageInfo
    cached: bool
    model: str


class SessionChunk(BaseModel):
    object: Literal["chat.session.chunk"] = "chat.session.chunk"
    session_id: str
    delta: DeltaMessage
    finish_reason: FinishName | None = None


class SessionFinalChunk(SessionChunk):
    """The last chunk of a session's stream: the usage and the stored answer's id."""

    usage: UsageInfo | None
    message_id: str
