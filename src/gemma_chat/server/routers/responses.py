"""``/v1/responses``: OpenAI's Responses API over the service's stateless chat, as vLLM and
Ollama serve it (nothing is stored: no ``previous_response_id``, ``store`` false)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from gemma_chat.domain.errors import GemmaChatError
from gemma_chat.domain.models import FinishReason, StreamChunk, TokenUsage
from gemma_chat.server.dependencies import (
    Admission,
    Service,
    first_token_timer,
    require_api_key,
    serve_model,
)
from gemma_chat.server.errors import ERROR_RESPONSES, public_error
from gemma_chat.server.messages import refuse, refuse_unsupported, responses_conversation
from gemma_chat.server.protocol import (
    IncompleteDetails,
    OutputMessage,
    OutputText,
    ResponseObject,
    ResponsesRequest,
    ResponsesUsage,
    StreamEvent,
    new_id,
    now,
)
from gemma_chat.server.sse import primed

__all__ = ["attach_router", "router"]

router = APIRouter(
    prefix="/v1",
    tags=["OpenAI"],
    dependencies=[Depends(require_api_key)],
    responses=ERROR_RESPONSES,
)


def attach_router(app: FastAPI) -> None:
    app.include_router(router)


_STREAMED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON, or with `stream: true` server-sent `StreamEvent`s "
        "(response.created ... response.completed).",
        "content": {"text/event-stream": {}},
    }
}


def _features(request: ResponsesRequest) -> None:
    if request.tools and request.tool_choice != "none":
        raise refuse("tools are not supported yet.", "tools")
    text_format = request.text.format if request.text is not None else None
    if text_format is not None and text_format.type != "text":
        raise refuse("text.format is not supported yet.", "text.format")


@router.post("/responses", response_model=ResponseObject, responses=_STREAMED)
async def create_response(request: ResponsesRequest, service: Service, http: Request) -> Any:
    refuse_unsupported(request)
    _features(request)
    messages: list[Any] = responses_conversation(
        request.input, request.instructions, service.settings.limits
    )
    parameters = request.generation_parameters(serve_model(service, request.model))
    model = parameters.get("model", service.llm.model_name)
    admission = Admission(http)

    def shell(status: Any, output: list[Any], usage: ResponsesUsage | None = None) -> Any:
        return ResponseObject(
            id=response_id,
            created_at=created,
            status=status,
            model=model,
            instructions=request.instructions,
            output=output,
            parallel_tool_calls=request.parallel_tool_calls is not False,
            tool_choice=request.tool_choice or "auto",
            tools=request.tools or [],
            temperature=request.temperature,
            top_p=request.top_p,
            max_output_tokens=request.max_output_tokens,
            text=request.text,
            metadata=request.metadata or {},
            usage=usage,
        )

    response_id, created = new_id("resp"), now()
    message_id = new_id("msg")
    if request.stream:
        chunks = await admission.until_disconnected(
            primed(service.stream_chat(messages, **parameters), admission)
        )
        events = _stream(chunks, shell, message_id, first_token_timer(http))
        return StreamingResponse(admission.stream(events), media_type="text/event-stream")
    answer = await admission.answer(service.chat(messages, **parameters))
    status, incomplete = _status(answer.finish_reason)
    message = OutputMessage(id=message_id, status=status, content=[OutputText(text=answer.content)])
    result = shell(status, [message], _usage(answer.token_usage))
    result.incomplete_details = incomplete
    return result


def _status(reason: FinishReason | None) -> tuple[Any, IncompleteDetails | None]:
    if reason is FinishReason.LENGTH:
        return "incomplete", IncompleteDetails(reason="max_output_tokens")
    return "completed", None


def _usage(usage: TokenUsage | None) -> ResponsesUsage | None:
    if usage is None:
        return None
    return ResponsesUsage(
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        total_tokens=usage.prompt_tokens + usage.completion_tokens,
    )


async def _stream(
    chunks: AsyncIterator[StreamChunk],
    shell: Callable[..., ResponseObject],
    message_id: str,
    on_first_text: Callable[[], None],
) -> AsyncIterator[str]:
    """The Responses API's event stream for one text message: created, in_progress, the output
    item and its content part added, text deltas, their ends, then completed (or incomplete)."""
    sequence = 0

    def send(kind: str, **fields: Any) -> str:
        nonlocal sequence
        payload = StreamEvent(type=kind, sequence_number=sequence, **fields)
        sequence += 1
        return _event(kind, payload)

    place = {"item_id": message_id, "output_index": 0, "content_index": 0}
    text: list[str] = []
    try:
        yield send("response.created", response=shell("in_progress", []))
        yield send("response.in_progress", response=shell("in_progress", []))
        item = OutputMessage(id=message_id, status="in_progress", content=[])
        yield send("response.output_item.added", output_index=0, item=item)
        yield send("response.content_part.added", **place, part=OutputText(text=""))
        async for piece in chunks:
            if piece.text:
                on_first_text()
                text.append(piece.text)
                yield send("response.output_text.delta", **place, delta=piece.text, logprobs=[])
            if piece.finish_reason is None:
                continue
            status, incomplete = _status(piece.finish_reason)
            part = OutputText(text="".join(text))
            yield send("response.output_text.done", **place, text=part.text, logprobs=[])
            yield send("response.content_part.done", **place, part=part)
            done = OutputMessage(id=message_id, status=status, content=[part])
            yield send("response.output_item.done", output_index=0, item=done)
            final = shell(status, [done], _usage(piece.token_usage))
            final.incomplete_details = incomplete
            kind = "response.completed" if status == "completed" else "response.incomplete"
            yield send(kind, response=final)
    except GemmaChatError as exc:
        public = public_error(exc)
        yield send("error", code=public.code, message=public.message, param=None)
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


def _event(kind: str, payload: BaseModel) -> str:
    return f"event: {kind}\ndata: {payload.model_dump_json()}\n\n"
