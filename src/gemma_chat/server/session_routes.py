"""Stateful sessions: clients send only the new message; the server keeps the history (and the
engine keeps the conversation's KV cache between turns)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from gemma_chat.domain.errors import GemmaChatError
from gemma_chat.domain.models import ChatSession, StreamChunk
from gemma_chat.server.app import Admission, Service, first_token_timer
from gemma_chat.server.schemas import SessionCreate, SessionMessageRequest
from gemma_chat.server.sse import DONE, error_event, finish_name, primed
from gemma_chat.server.sse import event as sse_event

__all__ = ["router"]

router = APIRouter(prefix="/v1/sessions")


def _summary(session: ChatSession) -> dict[str, Any]:
    return {
        "id": session.id,
        "object": "chat.session",
        "title": session.title,
        "system_prompt": session.system_prompt,
        "metadata": session.metadata,
        "created_at": session.created_at.isoformat(),
        "updated_at": session.updated_at.isoformat(),
        "message_count": session.message_count,
        "token_usage": session.token_usage.to_dict(),
    }


def _detail(session: ChatSession) -> dict[str, Any]:
    return {
        **_summary(session),
        "messages": [
            {
                "id": m.id,
                "role": m.role.value,
                "content": m.content,
                "created_at": m.created_at.isoformat(),
                "token_count": m.token_count,
            }
            for m in session.messages
        ],
    }


@router.post("", status_code=201)
async def create_session(body: SessionCreate, service: Service) -> dict[str, Any]:
    session = await service.create_session(
        body.title, system_prompt=body.system_prompt, metadata=body.metadata
    )
    return _detail(session)


@router.get("")
async def list_sessions(service: Service) -> dict[str, Any]:
    return {"object": "list", "data": [_summary(s) for s in await service.list_sessions()]}


@router.get("/{session_id}")
async def get_session(session_id: str, service: Service) -> dict[str, Any]:
    return _detail(await service.get_session(session_id))


@router.delete("/{session_id}")
async def delete_session(session_id: str, service: Service) -> dict[str, Any]:
    await service.delete_session(session_id)
    return {"id": session_id, "object": "chat.session.deleted", "deleted": True}


@router.post("/{session_id}/messages", response_model=None)
async def send_message(
    session_id: str, body: SessionMessageRequest, service: Service, http: Request
) -> Any:
    session = await service.get_session(session_id)  # 404 before any streaming starts
    parameters = body.generation_parameters(service.llm.model_name)
    admission = Admission(http)  # 429 when too many requests are in flight
    if body.stream:
        chunks = await primed(
            service.stream_response(session, body.content, **parameters), admission
        )
        events = _stream(chunks, session, first_token_timer(http))
        return StreamingResponse(admission.stream(events), media_type="text/event-stream")
    try:
        response = await service.generate_response(session, body.content, **parameters)
    finally:
        admission.release()
    return {
        "object": "chat.session.message",
        "session_id": session.id,
        "message": {
            "id": response.message_id,
            "role": "assistant",
            "content": response.content,
            "token_count": response.token_usage.completion_tokens,
        },
        "finish_reason": finish_name(response.finish_reason),
        "usage": response.token_usage.to_dict(),
        "cached": response.cached,
        "model": response.model,
    }


async def _stream(
    chunks: AsyncIterator[StreamChunk],
    session: ChatSession,
    on_first_text: Callable[[], None],
) -> AsyncIterator[str]:
    try:
        async for chunk in chunks:
            if chunk.text:
                on_first_text()
            event: dict[str, Any] = {
                "object": "chat.session.chunk",
                "session_id": session.id,
                "delta": {"content": chunk.text},
                "finish_reason": None,
            }
            if chunk.finish_reason is not None:
                event["finish_reason"] = finish_name(chunk.finish_reason)
                event["usage"] = chunk.token_usage.to_dict() if chunk.token_usage else None
                event["message_id"] = session.messages[-1].id
            yield sse_event(event)
    except GemmaChatError as exc:
        yield error_event(exc)
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
    yield DONE
