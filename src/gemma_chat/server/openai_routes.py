"""``/v1/chat/completions`` and ``/v1/models``, as OpenAI's clients expect them."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from gemma_chat.application.inference import InferenceService
from gemma_chat.domain.models import ChatSession, FinishReason, TokenUsage
from gemma_chat.server.app import Admission, Service, first_token_timer
from gemma_chat.server.errors import APIError
from gemma_chat.server.schemas import ChatCompletionRequest, CompletionRequest
from gemma_chat.shared.exceptions import GemmaChatError

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


def _session_and_question(request: ChatCompletionRequest) -> tuple[ChatSession, str]:
    """The conversation before the last message, and the last message (the user's)."""
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


def _parameters(request: ChatCompletionRequest, service: InferenceService) -> dict[str, Any]:
    if request.n != 1:
        raise APIError(400, "Only n=1 is supported.", kind="invalid_request_error", param="n")
    parameters: dict[str, Any] = {
        "temperature": request.temperature,
        "top_p": request.top_p,
        "max_new_tokens": request.max_completion_tokens or request.max_tokens,
        "stop": [request.stop] if isinstance(request.stop, str) else request.stop,
        "seed": request.seed,
    }
    if request.model and request.model != service.llm.model_name:
        parameters["model"] = request.model
    return parameters


def _finish(reason: FinishReason | None) -> str:
    return "length" if reason is FinishReason.LENGTH else "stop"


def _usage(usage: TokenUsage | None) -> dict[str, int] | None:
    return usage.to_dict() if usage is not None else None


@router.post("/chat/completions", response_model=None)
async def chat_completions(request: ChatCompletionRequest, service: Service, http: Request) -> Any:
    session, question = _session_and_question(request)
    parameters = _parameters(request, service)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    model = parameters.get("model", service.llm.model_name)
    admission = Admission(http)  # 429 when too many requests are in flight
    if request.stream:
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        events = _stream(
            service,
            session,
            question,
            parameters,
            completion_id,
            created,
            model,
            include_usage,
            first_token_timer(http),
        )
        return StreamingResponse(admission.stream(events), media_type="text/event-stream")
    try:
        response = await service.generate_response(session, question, **parameters)
    finally:
        admission.release()
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": response.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": response.content},
                "finish_reason": _finish(response.finish_reason),
                "logprobs": None,
            }
        ],
        "usage": _usage(response.token_usage),
    }


async def _stream(
    service: InferenceService,
    session: ChatSession,
    question: str,
    parameters: dict[str, Any],
    completion_id: str,
    created: int,
    model: str,
    include_usage: bool,
    on_first_text: Callable[[], None],
) -> AsyncIterator[str]:
    def event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        chunk = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            **extra,
        }
        return f"data: {json.dumps(chunk)}\n\n"

    chunks = service.stream_response(session, question, **parameters)
    try:
        yield event({"role": "assistant", "content": ""})
        async for chunk in chunks:
            if chunk.text:
                on_first_text()
                yield event({"content": chunk.text})
            if chunk.finish_reason is not None:
                yield event({}, _finish(chunk.finish_reason))
                if include_usage:
                    usage = {
                        "id": completion_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": _usage(chunk.token_usage),
                    }
                    yield f"data: {json.dumps(usage)}\n\n"
    except GemmaChatError as exc:  # the status line is sent already: report it in the stream
        error = {"error": {"message": str(exc), "type": "invalid_request_error"}}
        yield f"data: {json.dumps(error)}\n\n"
    finally:
        # A client that went away closes this generator: closing the model's stream stops it.
        await chunks.aclose()  # type: ignore[attr-defined]
    yield "data: [DONE]\n\n"


@router.post("/completions", response_model=None)
async def completions(request: CompletionRequest, service: Service, http: Request) -> Any:
    """A raw prompt, continued as it is (no chat format)."""
    prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
    if len(prompts) != 1:
        raise APIError(
            400, "Send one prompt (a string).", kind="invalid_request_error", param="prompt"
        )
    if request.n != 1:
        raise APIError(400, "Only n=1 is supported.", kind="invalid_request_error", param="n")
    parameters: dict[str, Any] = {
        "temperature": request.temperature,
        "top_p": request.top_p,
        "max_new_tokens": request.max_tokens,
        "stop": [request.stop] if isinstance(request.stop, str) else request.stop,
        "seed": request.seed,
    }
    if request.model and request.model != service.llm.model_name:
        parameters["model"] = request.model
    identity = {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": parameters.get("model", service.llm.model_name),
    }
    admission = Admission(http)
    if request.stream:
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        events = _stream_text(
            service, prompts[0], parameters, identity, include_usage, first_token_timer(http)
        )
        return StreamingResponse(admission.stream(events), media_type="text/event-stream")
    try:
        completion = await service.complete(prompts[0], **parameters)
    finally:
        admission.release()
    choice = {
        "index": 0,
        "text": completion.text,
        "finish_reason": _finish(completion.finish_reason),
        "logprobs": None,
    }
    return {**identity, "choices": [choice], "usage": _usage(completion.token_usage)}


async def _stream_text(
    service: InferenceService,
    prompt: str,
    parameters: dict[str, Any],
    identity: dict[str, Any],
    include_usage: bool,
    on_first_text: Callable[[], None],
) -> AsyncIterator[str]:
    chunks = service.stream_completion(prompt, **parameters)
    try:
        async for chunk in chunks:
            finish = _finish(chunk.finish_reason) if chunk.finish_reason is not None else None
            if chunk.text or finish:
                if chunk.text:
                    on_first_text()
                choice = {"index": 0, "text": chunk.text, "finish_reason": finish, "logprobs": None}
                yield f"data: {json.dumps({**identity, 'choices': [choice]})}\n\n"
            if finish and include_usage:
                usage = {**identity, "choices": [], "usage": _usage(chunk.token_usage)}
                yield f"data: {json.dumps(usage)}\n\n"
    except GemmaChatError as exc:
        error = {"error": {"message": str(exc), "type": "invalid_request_error"}}
        yield f"data: {json.dumps(error)}\n\n"
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
    yield "data: [DONE]\n\n"
