"""``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models``, as OpenAI's clients expect."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from gemma_chat.domain.errors import GemmaChatError
from gemma_chat.domain.models import ChatSession, StreamChunk, TokenUsage
from gemma_chat.server.app import Admission, Service, first_token_timer
from gemma_chat.server.errors import APIError
from gemma_chat.server.schemas import ChatCompletionRequest, CompletionRequest
from gemma_chat.server.sse import DONE, error_event, event, finish_name, primed
from gemma_chat.shared.config import LimitsSettings

__all__ = ["router"]

router = APIRouter(prefix="/v1")


@router.get("/models")
async def list_models(service: Service) -> dict[str, Any]:
    info = await service.get_model_info()
    names = [service.llm.model_name, *info.get("other_models_loaded", [])]
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "gemma-chat"}
            for name in names
        ],
    }


def _session_and_question(
    request: ChatCompletionRequest, limits: LimitsSettings
) -> tuple[ChatSession, str]:
    """The conversation before the last message, and the last message (the user's)."""
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
    *history, last = request.messages
    if last.role != "user":
        raise APIError(
            400,
            "The last message must have role 'user': it is the one the model answers.",
            kind="invalid_request_error",
            param="messages",
        )
    system = "\n\n".join(m.content for m in history if m.role in ("system", "developer"))
    session = ChatSession(title="chat.completions", system_prompt=system or None)
    for message in history:
        if message.role == "user":
            session.add_user_message(message.content)
        elif message.role == "assistant":
            session.add_assistant_message(message.content)
    return session, last.content


def _only_one_choice(n: int) -> None:
    if n != 1:
        raise APIError(400, "Only n=1 is supported.", kind="invalid_request_error", param="n")


def _usage(usage: TokenUsage | None) -> dict[str, int] | None:
    return usage.to_dict() if usage is not None else None


def _identity(kind: str, prefix: str, model: str) -> dict[str, Any]:
    """What every response and every chunk of one request shares."""
    return {
        "id": f"{prefix}-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": model,
    }


@router.post("/chat/completions", response_model=None)
async def chat_completions(request: ChatCompletionRequest, service: Service, http: Request) -> Any:
    _only_one_choice(request.n)
    session, question = _session_and_question(request, service.settings.limits)
    parameters = request.generation_parameters(service.llm.model_name)
    model = parameters.get("model", service.llm.model_name)
    admission = Admission(http)  # 429 when too many requests are in flight
    if request.stream:
        identity = _identity("chat.completion.chunk", "chatcmpl", model)
        chunks = await primed(service.stream_response(session, question, **parameters), admission)
        events = _events(
            chunks,
            lambda delta, finish: {
                **identity,
                "choices": [
                    {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
                ],
            },
            identity,
            bool(request.stream_options and request.stream_options.include_usage),
            first_token_timer(http),
            first={"role": "assistant", "content": ""},
        )
        return StreamingResponse(admission.stream(events), media_type="text/event-stream")
    try:
        response = await service.generate_response(session, question, **parameters)
    finally:
        admission.release()
    message = {"role": "assistant", "content": response.content}
    choice = {
        "index": 0,
        "message": message,
        "finish_reason": finish_name(response.finish_reason),
        "logprobs": None,
    }
    return {
        **_identity("chat.completion", "chatcmpl", response.model),
        "choices": [choice],
        "usage": _usage(response.token_usage),
    }


@router.post("/completions", response_model=None)
async def completions(request: CompletionRequest, service: Service, http: Request) -> Any:
    """A raw prompt, continued as it is (no chat format)."""
    prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
    if len(prompts) != 1:
        raise APIError(
            400, "Send one prompt (a string).", kind="invalid_request_error", param="prompt"
        )
    _only_one_choice(request.n)
    parameters = request.generation_parameters(service.llm.model_name)
    identity = _identity("text_completion", "cmpl", parameters.get("model", service.llm.model_name))
    admission = Admission(http)
    if request.stream:
        chunks = await primed(service.stream_completion(prompts[0], **parameters), admission)
        events = _events(
            chunks,
            lambda delta, finish: {
                **identity,
                "choices": [
                    {
                        "index": 0,
                        "text": delta.get("content", ""),
                        "finish_reason": finish,
                        "logprobs": None,
                    }
                ],
            },
            identity,
            bool(request.stream_options and request.stream_options.include_usage),
            first_token_timer(http),
        )
        return StreamingResponse(admission.stream(events), media_type="text/event-stream")
    try:
        completion = await service.complete(prompts[0], **parameters)
    finally:
        admission.release()
    choice = {
        "index": 0,
        "text": completion.text,
        "finish_reason": finish_name(completion.finish_reason),
        "logprobs": None,
    }
    return {**identity, "choices": [choice], "usage": _usage(completion.token_usage)}


Shape = Callable[[dict[str, Any], str | None], dict[str, Any]]


async def _events(
    chunks: AsyncIterator[StreamChunk],
    shape: Shape,
    identity: dict[str, Any],
    include_usage: bool,
    on_first_text: Callable[[], None],
    first: dict[str, Any] | None = None,
) -> AsyncIterator[str]:
    """OpenAI's stream: one id throughout, the finish reason on its own chunk, then the usage
    (when asked for) on a chunk without choices, then ``[DONE]``."""
    try:
        if first is not None:
            yield event(shape(first, None))
        async for chunk in chunks:
            if chunk.text:
                on_first_text()
                yield event(shape({"content": chunk.text}, None))
            if chunk.finish_reason is not None:
                yield event(shape({}, finish_name(chunk.finish_reason)))
                if include_usage:
                    yield event({**identity, "choices": [], "usage": _usage(chunk.token_usage)})
    except GemmaChatError as exc:
        yield error_event(exc)
    finally:
        # A client that went away closes this generator: closing the model's stream stops it.
        await chunks.aclose()  # type: ignore[attr-defined]
    yield DONE
