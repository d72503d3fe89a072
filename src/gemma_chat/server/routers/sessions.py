"""Stateful sessions: clients send only the new message; the server keeps the history (and the
engine keeps the conversation's KV cache between turns)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import StreamingResponse

from gemma_chat.application.inference import InferenceService
from gemma_chat.domain.errors import GemmaChatError
from gemma_chat.domain.models import StreamChunk
from gemma_chat.server.dependencies import (
    Admission,
    Service,
    first_token_timer,
    require_api_key,
    serve_model,
)
from gemma_chat.server.errors import ERROR_RESPONSES
from gemma_chat.server.messages import refuse_unsupported
from gemma_chat.server.protocol import (
    ChatGenerationRequest,
    DeltaMessage,
    SessionChunk,
    SessionCreate,
    SessionDeleted,
    SessionDetail,
    SessionFinalChunk,
    SessionList,
    SessionMessageRequest,
    SessionMessageResponse,
    SessionRegenerateRequest,
    SessionReply,
    SessionSummary,
    SessionUpdate,
    UsageInfo,
    finish_name,
)
from gemma_chat.server.sse import DONE, error_event, event, primed

__all__ = ["attach_router", "router"]

router = APIRouter(
    prefix="/v1/sessions",
    tags=["Sessions"],
    dependencies=[Depends(require_api_key)],
    responses=ERROR_RESPONSES,
)


def attach_router(app: FastAPI) -> None:
    app.include_router(router)


@router.post("", status_code=201, response_model=SessionDetail)
async def create_session(body: SessionCreate, service: Service) -> SessionDetail:
    session = await service.create_session(
        body.title, system_prompt=body.system_prompt, metadata=body.metadata
    )
    return SessionDetail.of(session)


@router.get("", response_model=SessionList)
async def list_sessions(service: Service) -> SessionList:
    return SessionList(data=[SessionSummary.of(s) for s in await service.list_sessions()])


@router.get("/{session_id}", response_model=SessionDetail)
async def get_session(session_id: str, service: Service) -> SessionDetail:
    return SessionDetail.of(await service.get_session(session_id))


@router.patch("/{session_id}", response_model=SessionDetail)
async def update_session(session_id: str, body: SessionUpdate, service: Service) -> SessionDetail:
    """Rename the session, change its system prompt or replace its metadata. Waits for a turn
    under way on the session to finish first."""
    session = await service.update_session(
        session_id, title=body.title, system_prompt=body.system_prompt, metadata=body.metadata
    )
    return SessionDetail.of(session)


@router.delete("/{session_id}", response_model=SessionDeleted)
async def delete_session(session_id: str, service: Service) -> SessionDeleted:
    await service.delete_session(session_id)
    return SessionDeleted(id=session_id)


_TURN_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON, or with `stream: true` server-sent `SessionChunk`s, the last "
        "a `SessionFinalChunk`, then `[DONE]`. A client that closes the stream stops the "
        "generation, and the session stays as it was.",
        "content": {"text/event-stream": {}},
    }
}


@router.post(
    "/{session_id}/messages", response_model=SessionMessageResponse, responses=_TURN_RESPONSES
)
async def send_message(
    session_id: str, body: SessionMessageRequest, service: Service, http: Request
) -> Any:
    return await _turn(session_id, body, body.content, service, http)


@router.post(
    "/{session_id}/regenerate", response_model=SessionMessageResponse, responses=_TURN_RESPONSES
)
async def regenerate(
    session_id: str, body: SessionRegenerateRequest, service: Service, http: Request
) -> Any:
    """A new answer to the last user message. It replaces the last answer when it is complete;
    a stopped or failed regeneration leaves the old answer (400 `nothing_to_regenerate` when
    the session does not end with one)."""
    return await _turn(session_id, body, None, service, http)


async def _turn(
    session_id: str,
    body: ChatGenerationRequest,
    content: str | None,
    service: InferenceService,
    http: Request,
) -> Any:
    """A message's answer (``content``), or a new answer to the last one (None)."""
    refuse_unsupported(body)
    session = await service.get_session(session_id)  # 404 before any streaming starts
    if content is None:
        session.last_turn()  # 400 before any streaming starts
    parameters = body.generation_parameters(serve_model(service, body.model))
    admission = Admission(http)  # 429 when too many requests are in flight
    # By id, not a copy read here: the service reads the session under its lock, so concurrent
    # turns on it run one after another, each seeing the ones before it.
    if body.stream:
        if content is None:
            stream = service.stream_regenerated_response(session_id, **parameters)
        else:
            stream = service.stream_response(session_id, content, **parameters)
        chunks = await admission.until_disconnected(primed(stream, admission))
        events = _stream(chunks, session_id, service, first_token_timer(http))
        return StreamingResponse(admission.stream(events), media_type="text/event-stream")
    if content is None:
        call = service.regenerate_response(session_id, **parameters)
    else:
        call = service.generate_response(session_id, content, **parameters)
    response = await admission.answer(call)
    reply = SessionReply(
        id=response.message_id,
        content=response.content,
        token_count=response.token_usage.completion_tokens,
    )
    return SessionMessageResponse(
        session_id=session_id,
        message=reply,
        finish_reason=finish_name(response.finish_reason),
        usage=UsageInfo(**response.token_usage.to_dict()),
        cached=response.cached,
        model=response.model,
    )


async def _stream(
    chunks: AsyncIterator[StreamChunk],
    session_id: str,
    service: InferenceService,
    on_first_text: Callable[[], None],
) -> AsyncIterator[str]:
    try:
        async for chunk in chunks:
            if chunk.text:
                on_first_text()
            delta = DeltaMessage(content=chunk.text)
            if chunk.finish_reason is None:
                yield event(SessionChunk(session_id=session_id, delta=delta))
            else:
                # The service yields the last chunk after recording the turn and before it lets
                # the session's next turn in: the stored session ends with this answer.
                session = await service.get_session(session_id)
                final = SessionFinalChunk(
                    session_id=session_id,
                    delta=delta,
                    finish_reason=finish_name(chunk.finish_reason),
                    usage=UsageInfo.of(chunk.token_usage),
                    message_id=session.messages[-1].id,
                )
                yield event(final)
    except GemmaChatError as exc:
        yield error_event(exc)
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
    yield DONE
