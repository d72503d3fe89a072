"""``/v1/responses``: OpenAI's Responses API over the service's stateless chat, as vLLM and
Ollama serve it (nothing is stored: no ``previous_response_id``, ``store`` false)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from gemma_chat.domain.errors import GemmaChatError
from gemma_chat.domain.models import FinishReason, StreamChunk, TokenUsage, ToolCall
from gemma_chat.server.dependencies import (
    Admission,
    Service,
    first_token_timer,
    require_api_key,
    serve_model,
)
from gemma_chat.server.errors import ERROR_RESPONSES, public_error
from gemma_chat.server.messages import refuse_unsupported, responses_conversation
from gemma_chat.server.protocol import (
    FunctionCallItem,
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


@router.post("/responses", response_model=ResponseObject, responses=_STREAMED)
async def create_response(request: ResponsesRequest, service: Service, http: Request) -> Any:
    refuse_unsupported(request)
    messages: list[Any] = responses_conversation(
        request.input, request.instructions, service.settings.limits
    )
    parameters = request.generation_parameters(serve_model(service, request.model))
    parameters.update(request.structured_parameters())
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
    output: list[OutputMessage | FunctionCallItem] = []
    if answer.content or not answer.tool_calls:
        text = OutputText(text=answer.content)
        output.append(OutputMessage(id=message_id, status=status, content=[text]))
    output += [_call_item(call) for call in answer.tool_calls]
    result = shell(status, output, _usage(answer.token_usage))
    result.incomplete_details = incomplete
    return result


def _call_item(call: ToolCall, status: Any = "completed", arguments: str | None = None) -> Any:
    return FunctionCallItem(
        id="fc_" + call.id.removeprefix("call_"),
        call_id=call.id,
        name=call.name,
        arguments=call.arguments if arguments is None else arguments,
        status=status,
    )


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
    """The Responses API's event stream: created, in_progress; for text, its message item and
    content part added, text deltas, their ends; for each tool call, its item added, its
    arguments, its end; then completed (or incomplete)."""
    sequence = 0

    def send(kind: str, **fields: Any) -> str:
        nonlocal sequence
        payload = StreamEvent(type=kind, sequence_number=sequence, **fields)
        sequence += 1
        return _event(kind, payload)

    place = {"item_id": message_id, "output_index": 0, "content_index": 0}
    text: list[str] | None = None  # None until the message item is open
    output: list[OutputMessage | FunctionCallItem] = []
    try:
        yield send("response.created", response=shell("in_progress", []))
        yield send("response.in_progress", response=shell("in_progress", []))
        async for piece in chunks:
            if piece.text:
                on_first_text()
                if text is None:
                    text = []
                    item = OutputMessage(id=message_id, status="in_progress", content=[])
                    yield send("response.output_item.added", output_index=0, item=item)
                    yield send("response.content_part.added", **place, part=OutputText(text=""))
                text.append(piece.text)
                yield send("response.output_text.delta", **place, delta=piece.text, logprobs=[])
            if piece.finish_reason is None:
                continue
            status, incomplete = _status(piece.finish_reason)
            if text is None and not piece.tool_calls:  # an empty answer is an empty message
                text = []
                item = OutputMessage(id=message_id, status="in_progress", content=[])
                yield send("response.output_item.added", output_index=0, item=item)
                yield send("response.content_part.added", **place, part=OutputText(text=""))
            if text is not None:
                part = OutputText(text="".join(text))
                yield send("response.output_text.done", **place, text=part.text, logprobs=[])
                yield send("response.content_part.done", **place, part=part)
                done = OutputMessage(id=message_id, status=status, content=[part])
                yield send("response.output_item.done", output_index=0, item=done)
                output.append(done)
            for call in piece.tool_calls:
                at = len(output)
                call_item = _call_item(call)
                started = _call_item(call, "in_progress", arguments="")
                yield send("response.output_item.added", output_index=at, item=started)
                where = {"item_id": call_item.id, "output_index": at}
                yield send("response.function_call_arguments.delta", **where, delta=call.arguments)
                yield send(
                    "response.function_call_arguments.done",
                    **where,
                    name=call.name,
                    arguments=call.arguments,
                )
                yield send("response.output_item.done", output_index=at, item=call_item)
                output.append(call_item)
            final = shell(status, output, _usage(piece.token_usage))
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
