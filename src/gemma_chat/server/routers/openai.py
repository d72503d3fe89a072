"""``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models``, as OpenAI's clients expect."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from gemma_chat.application.inference import InferenceService
from gemma_chat.domain.errors import GemmaChatError
from gemma_chat.domain.models import StreamChunk, TokenLogprob, TokenUsage
from gemma_chat.server.dependencies import (
    Admission,
    Service,
    first_token_timer,
    require_api_key,
    serve_model,
)
from gemma_chat.server.errors import ERROR_RESPONSES, APIError
from gemma_chat.server.messages import (
    chat_conversation,
    choices_allowed,
    refuse,
    refuse_unsupported,
)
from gemma_chat.server.protocol import (
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionUsageChunk,
    ChatMessageOut,
    ChoiceLogprobs,
    ChunkChoice,
    CompletionChoice,
    CompletionChunk,
    CompletionChunkChoice,
    CompletionLogprobs,
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
from gemma_chat.server.sse import DONE, error_event, event, primed, side_by_side

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
    return ModelList(data=[ModelCard(id=name) for name in await _served(service)])


@router.get("/models/{model_id:path}", response_model=ModelCard)
async def retrieve_model(model_id: str, service: Service) -> ModelCard:
    if model_id in await _served(service) or model_id in service.settings.server.models:
        return ModelCard(id=model_id)
    raise APIError(
        404,
        f"The model {model_id!r} is not served here.",
        kind="not_found_error",
        code="model_not_found",
        param="model",
    )


async def _served(service: InferenceService) -> list[str]:
    info = await service.get_model_info()
    return [service.llm.model_name, *info.get("other_models_loaded", [])]


def _seeded(parameters: dict[str, Any], index: int) -> dict[str, Any]:
    """Choice ``index``'s parameters: its own seed, so seeded choices differ yet repeat."""
    if index == 0 or parameters.get("seed") is None:
        return parameters
    return {**parameters, "seed": parameters["seed"] + index}


@router.post(
    "/chat/completions",
    response_model=ChatCompletionResponse,
    responses=_streamed(ChatCompletionChunk),
)
async def chat_completions(request: ChatCompletionRequest, service: Service, http: Request) -> Any:
    refuse_unsupported(request)
    choices_allowed(request.n, service.settings.limits)
    logprobs = request.logprob_alternatives
    messages: list[Any] = chat_conversation(request.messages, service.settings.limits)
    parameters = request.generation_parameters(serve_model(service, request.model))
    parameters.update(request.structured_parameters(), logprobs=logprobs)
    model = parameters.get("model", service.llm.model_name)
    admission = Admission(http)  # 429 when too many requests are in flight
    if request.stream:
        chunk_id, created = new_id("chatcmpl"), now()

        def chunk(
            index: int,
            delta: DeltaMessage,
            finish: FinishName | None,
            entries: tuple[TokenLogprob, ...] = (),
        ) -> BaseModel:
            choice = ChunkChoice(
                index=index,
                delta=delta,
                finish_reason=finish,
                logprobs=ChoiceLogprobs.of(entries) if entries else None,
            )
            return ChatCompletionChunk(id=chunk_id, created=created, model=model, choices=[choice])

        def usage_chunk(usage: UsageInfo | None) -> ChatCompletionUsageChunk:
            return ChatCompletionUsageChunk(
                id=chunk_id, created=created, model=model, choices=[], usage=usage
            )

        streams = [
            service.stream_chat(messages, **_seeded(parameters, index))
            for index in range(request.n)
        ]
        chunks = await admission.until_disconnected(primed(side_by_side(streams), admission))
        events = _events(
            chunks,
            request.n,
            chunk,
            usage_chunk if request.include_usage else None,
            first_token_timer(http),
            first=DeltaMessage(role="assistant", content=""),
        )
        return StreamingResponse(admission.stream(events), media_type="text/event-stream")
    responses = await admission.answer(
        asyncio.gather(
            *(service.chat(messages, **_seeded(parameters, i)) for i in range(request.n))
        )
    )
    choices = [
        ChatCompletionChoice(
            index=index,
            message=ChatMessageOut.of(response.content, response.tool_calls),
            finish_reason=finish_name(response.finish_reason),
            logprobs=ChoiceLogprobs.of(response.logprobs) if logprobs is not None else None,
        )
        for index, response in enumerate(responses)
    ]
    return ChatCompletionResponse(
        id=new_id("chatcmpl"),
        created=now(),
        model=responses[0].model,
        choices=choices,
        usage=UsageInfo.total([r.token_usage for r in responses]),
    )


@router.post(
    "/completions", response_model=CompletionResponse, responses=_streamed(CompletionChunk)
)
async def completions(request: CompletionRequest, service: Service, http: Request) -> Any:
    """A raw prompt, continued as it is (no chat format)."""
    refuse_unsupported(request)
    prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
    if len(prompts) != 1:
        raise refuse("Send one prompt (a string).", "prompt")
    choices_allowed(request.n, service.settings.limits)
    parameters = request.generation_parameters(serve_model(service, request.model))
    parameters["logprobs"] = request.logprobs  # validated with the other parameters
    model = parameters.get("model", service.llm.model_name)
    completion_id, created = new_id("cmpl"), now()
    admission = Admission(http)
    if request.stream:

        offsets = [0] * request.n  # each choice's characters so far, for text_offset

        def chunk(
            index: int,
            delta: DeltaMessage,
            finish: FinishName | None,
            entries: tuple[TokenLogprob, ...] = (),
        ) -> BaseModel:
            scored = None
            if entries:
                scored = CompletionLogprobs.of(entries, offsets[index])
                offsets[index] += sum(len(e.token) for e in entries)
            choice = CompletionChunkChoice(
                index=index, text=delta.content or "", finish_reason=finish, logprobs=scored
            )
            return CompletionChunk(id=completion_id, created=created, model=model, choices=[choice])

        def usage_chunk(usage: UsageInfo | None) -> CompletionUsageChunk:
            return CompletionUsageChunk(
                id=completion_id, created=created, model=model, choices=[], usage=usage
            )

        streams = [
            service.stream_completion(prompts[0], **_seeded(parameters, index))
            for index in range(request.n)
        ]
        chunks = await admission.until_disconnected(primed(side_by_side(streams), admission))
        events = _events(
            chunks,
            request.n,
            chunk,
            usage_chunk if request.include_usage else None,
            first_token_timer(http),
        )
        return StreamingResponse(admission.stream(events), media_type="text/event-stream")
    completions = await admission.answer(
        asyncio.gather(
            *(service.complete(prompts[0], **_seeded(parameters, i)) for i in range(request.n))
        )
    )
    choices = [
        CompletionChoice(
            index=index,
            text=completion.text,
            finish_reason=finish_name(completion.finish_reason),
            logprobs=(
                CompletionLogprobs.of(completion.logprobs) if request.logprobs is not None else None
            ),
        )
        for index, completion in enumerate(completions)
    ]
    return CompletionResponse(
        id=completion_id,
        created=created,
        model=model,
        choices=choices,
        usage=UsageInfo.total([c.token_usage for c in completions]),
    )


async def _events(
    chunks: AsyncIterator[tuple[int, StreamChunk]],
    n: int,
    chunk: Callable[[int, DeltaMessage, FinishName | None, tuple[TokenLogprob, ...]], BaseModel],
    usage_chunk: Callable[[UsageInfo | None], BaseModel] | None,
    on_first_text: Callable[[], None],
    first: DeltaMessage | None = None,
) -> AsyncIterator[str]:
    """OpenAI's stream: one id throughout, each choice's finish reason on its own chunk, then the
    usage of all choices (when asked for) on a chunk without choices, then ``[DONE]``. Log
    probability entries go with the text they belong to, or with the finish reason."""
    usages: list[TokenUsage | None] = []
    try:
        if first is not None:
            for index in range(n):
                yield event(chunk(index, first, None, ()))
        async for index, piece in chunks:
            entries = piece.logprobs
            if piece.text:
                on_first_text()
                yield event(chunk(index, DeltaMessage(content=piece.text), None, entries))
                entries = ()
            for delta in DeltaMessage.tool_call_deltas(piece.tool_calls):
                yield event(chunk(index, delta, None, ()))
            if piece.finish_reason is not None:
                finish = finish_name(piece.finish_reason)
                yield event(chunk(index, DeltaMessage(), finish, entries))
                usages.append(piece.token_usage)
        if usage_chunk is not None:
            yield event(usage_chunk(UsageInfo.total(usages)))
    except GemmaChatError as exc:
        yield error_event(exc)
    finally:
        # A client that went away closes this generator: closing the model's stream stops it.
        await chunks.aclose()  # type: ignore[attr-defined]
    yield DONE
