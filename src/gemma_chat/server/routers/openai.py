"""``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models``, as OpenAI's clients expect."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from gemma_chat.domain.errors import GemmaChatError
from gemma_chat.domain.models import ChatMessage, StreamChunk
from gemma_chat.server.dependencies import (
    Admission,
    Service,
    first_token_timer,
    require_api_key,
    serve_model,
)
from gemma_chat.server.errors import ERROR_RESPONSES, APIError
from gemma_chat.server.protocol import (
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionUsageChunk,
    ChatMessageOut,
    ChunkChoice,
    CompletionChoice,
    CompletionChunk,
    CompletionChunkChoice,
    CompletionRequest,
    CompletionResponse,
    CompletionUsageChunk,
    DeltaMessage,
    FinishName,
    ModelCard,
    ModelList,
    UsageInfo,
    finish_name,
    new_id,
    now,
)
from gemma_chat.server.sse import DONE, error_event, event, primed
from gemma_chat.shared.config import LimitsSettings

__all__ = ["attach_router", "router"]

router = APIRouter(
    prefix="/v1",
    tags=["OpenAI"],
    dependencies=[Depends(require_api_key)],
    responses=ERROR_RESPONSES,
)


def _streamed(chunk: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """The 200 response's second form: with ``stream: true``, server-sent ``chunk``s."""
    description = f"JSON, or with `stream: true` server-sent `{chunk.__name__}`s then `[DONE]`."
    return {200: {"description": description, "content": {"text/event-stream": {}}}}


def attach_router(app: FastAPI) -> None:
    app.include_router(router)


@router.get("/models", response_model=ModelList)
async def list_models(service: Service) -> ModelList:
    info = await service.get_model_info()
    names = [service.llm.model_name, *info.get("other_models_loaded", [])]
    return ModelList(data=[ModelCard(id=name) for name in names])


def _conversation(request: ChatCompletionRequest, limits: LimitsSettings) -> list[ChatMessage]:
    """The messages as ``service.chat`` takes them (``developer`` is OpenAI's newer name for
    ``system``). The service validates them all; the three checks here come first because their
    errors name OpenAI's ``param`` (the library's errors carry no field path)."""
    if len(request.messages) > limits.max_messages:
        raise APIError(
            400,
            f"{len(request.messages)} messages; the limit is {limits.max_messages} "
            "(GEMMA_LIMITS__MAX_MESSAGES).",
            kind="invalid_request_error",
            param="messages",
        )
    for index, message in enumerate(request.messages):
        if len(message.content) > limits.max_message_chars:
            raise APIError(
                400,
                f"messages[{index}] has {len(message.content)} characters; the limit is "
                f"{limits.max_message_chars} (GEMMA_LIMITS__MAX_MESSAGE_CHARS).",
                kind="invalid_request_error",
                param=f"messages[{index}].content",
            )
    if request.messages[-1].role != "user":
        raise APIError(
            400,
            "The last message must have role 'user': it is the one the model answers.",
            kind="invalid_request_error",
            param="messages",
        )
    return [
        {"role": "system" if m.role == "developer" else m.role, "content": m.content}
        for m in request.messages
    ]


def _only_one_choice(n: int) -> None:
    if n != 1:
        raise APIError(400, "Only n=1 is supported.", kind="invalid_request_error", param="n")


@router.post(
    "/chat/completions",
    response_model=ChatCompletionResponse,
    responses=_streamed(ChatCompletionChunk),
)
async def chat_completions(request: ChatCompletionRequest, service: Service, http: Request) -> Any:
    _only_one_choice(request.n)
    messages = _conversation(request, service.settings.limits)
    parameters = request.generation_parameters(serve_model(service, request.model))
    model = parameters.get("model", service.llm.model_name)
    admission = Admission(http)  # 429 when too many requests are in flight
    if request.stream:
        chunk_id, created = new_id("chatcmpl"), now()

        def chunk(delta: DeltaMessage, finish: FinishName | None) -> ChatCompletionChunk:
            choice = ChunkChoice(delta=delta, finish_reason=finish)
            return ChatCompletionChunk(id=chunk_id, created=created, model=model, choices=[choice])

        def usage_chunk(usage: UsageInfo | None) -> ChatCompletionUsageChunk:
            return ChatCompletionUsageChunk(
                id=chunk_id, created=created, model=model, choices=[], usage=usage
            )

        chunks = await admission.until_disconnected(
            primed(service.stream_chat(messages, **parameters), admission)
        )
        events = _events(
            chunks,
            chunk,
            usage_chunk if request.include_usage else None,
            first_token_timer(http),
            first=DeltaMessage(role="assistant", content=""),
        )
        return StreamingResponse(admission.stream(events), media_type="text/event-stream")
    response = await admission.answer(service.chat(messages, **parameters))
    choice = ChatCompletionChoice(
        message=ChatMessageOut(content=response.content),
        finish_reason=finish_name(response.finish_reason),
    )
    return ChatCompletionResponse(
        id=new_id("chatcmpl"),
        created=now(),
        model=response.model,
        choices=[choice],
        usage=UsageInfo.of(response.token_usage),
    )


@router.post(
    "/completions", response_model=CompletionResponse, responses=_streamed(CompletionChunk)
)
async def completions(request: CompletionRequest, service: Service, http: Request) -> Any:
    """A raw prompt, continued as it is (no chat format)."""
    prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
    if len(prompts) != 1:
        raise APIError(
            400, "Send one prompt (a string).", kind="invalid_request_error", param="prompt"
        )
    _only_one_choice(request.n)
    parameters = request.generation_parameters(serve_model(service, request.model))
    model = parameters.get("model", service.llm.model_name)
    completion_id, created = new_id("cmpl"), now()
    admission = Admission(http)
    if request.stream:

        def chunk(delta: DeltaMessage, finish: FinishName | None) -> CompletionChunk:
            choice = CompletionChunkChoice(text=delta.content or "", finish_reason=finish)
            return CompletionChunk(id=completion_id, created=created, model=model, choices=[choice])

        def usage_chunk(usage: UsageInfo | None) -> CompletionUsageChunk:
            return CompletionUsageChunk(
                id=completion_id, created=created, model=model, choices=[], usage=usage
            )

        chunks = await admission.until_disconnected(
            primed(service.stream_completion(prompts[0], **parameters), admission)
        )
        events = _events(
            chunks,
            chunk,
            usage_chunk if request.include_usage else None,
            first_token_timer(http),
        )
        return StreamingResponse(admission.stream(events), media_type="text/event-stream")
    completion = await admission.answer(service.complete(prompts[0], **parameters))
    choice = CompletionChoice(
        text=completion.text, finish_reason=finish_name(completion.finish_reason)
    )
    return CompletionResponse(
        id=completion_id,
        created=created,
        model=model,
        choices=[choice],
        usage=UsageInfo.of(completion.token_usage),
    )


async def _events(
    chunks: AsyncIterator[StreamChunk],
    chunk: Callable[[DeltaMessage, FinishName | None], BaseModel],
    usage_chunk: Callable[[UsageInfo | None], BaseModel] | None,
    on_first_text: Callable[[], None],
    first: DeltaMessage | None = None,
) -> AsyncIterator[str]:
    """OpenAI's stream: one id throughout, the finish reason on its own chunk, then the usage
    (when asked for) on a chunk without choices, then ``[DONE]``."""
    try:
        if first is not None:
            yield event(chunk(first, None))
        async for piece in chunks:
            if piece.text:
                on_first_text()
                yield event(chunk(DeltaMessage(content=piece.text), None))
            if piece.finish_reason is not None:
                yield event(chunk(DeltaMessage(), finish_name(piece.finish_reason)))
                if usage_chunk is not None:
                    yield event(usage_chunk(UsageInfo.of(piece.token_usage)))
    except GemmaChatError as exc:
        yield error_event(exc)
    finally:
        # A client that went away closes this generator: closing the model's stream stops it.
        await chunks.aclose()  # type: ignore[attr-defined]
    yield DONE
