"""BaseLLM: the template's contract, through small subclasses written as a user would."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gemma_chat import (
    BaseLLM,
    ChatSession,
    Completion,
    ContextLengthExceededError,
    FinishReason,
    GenerationConfig,
    InferenceError,
    InferenceService,
    InvalidMessageError,
    LLMProtocol,
    LLMState,
    ModelLoadError,
    ModelNotFoundError,
    ModelNotLoadedError,
    TokenUsage,
    get_settings,
    register_llm,
)
from gemma_chat.infrastructure.llm.registry import default_registry
from gemma_chat.testing import FakeLLM

GREEDY = GenerationConfig(temperature=0.0)
HELLO = [{"role": "user", "content": "Hello"}]


# The development guide's "Adding New LLM Implementations", step 1, as written there.
class NewLLM(BaseLLM):
    async def _load_model_implementation(self) -> None:
        # Load your model here
        pass

    async def _generate_implementation(self, prompt: str, **kwargs) -> str:  # type: ignore[no-untyped-def,return]
        # Generate response
        pass


def test_new_llm() -> None:
    # Step 3 of the guide, as written there.
    test_settings = get_settings(model={"name": "new-model"})
    llm = NewLLM(test_settings)
    assert llm.model_name == "new-model"


class EchoLLM(BaseLLM):
    """Answers with the last line of the prompt it was given."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(get_settings(**settings))
        self.loads = 0
        self.prompts: list[str] = []

    async def _load_model_implementation(self) -> None:
        await asyncio.sleep(0.01)
        self.loads += 1

    async def _generate_implementation(self, prompt: str, **kwargs: Any) -> str:
        self.prompts.append(prompt)
        return f"echo {prompt.splitlines()[-2]} STOP tail"


@pytest.mark.asyncio
async def test_registering_an_adapter_makes_the_service_use_it_for_matching_names() -> None:
    register_llm("echo-model", lambda settings: EchoLLM(model={"name": settings.model.name}))
    try:
        settings = get_settings(model={"name": "my-echo-model", "temperature": 0})
        async with InferenceService(settings) as service:
            assert isinstance(service.llm, EchoLLM)
            response = await service.generate_response(ChatSession(), "ping", stop=["STOP"])
    finally:
        default_registry.unregister("echo-model")
    assert response.content == "echo user: ping "
    assert "echo-model" not in default_registry.names


@pytest.mark.asyncio
async def test_an_implementation_that_returns_no_text_gets_a_clear_error() -> None:
    llm = NewLLM(get_settings(model={"name": "new-model"}))
    await llm.load()
    with pytest.raises(InferenceError, match="must return the answer as a str"):
        await llm.generate(HELLO, GREEDY)


@pytest.mark.asyncio
async def test_a_text_answer_is_cut_at_stop_sequences_and_counted() -> None:
    llm = EchoLLM()
    await llm.load()
    completion = await llm.generate(HELLO, GenerationConfig(stop=("STOP",)))
    assert completion.text == "echo user: Hello "
    assert completion.finish_reason is FinishReason.STOP
    assert completion.token_usage.completion_tokens == llm.count_tokens("echo user: Hello ")
    assert completion.token_usage.prompt_tokens == llm.count_tokens(llm.prompts[0])
    assert llm.inference_count == 1
    assert llm.total_tokens_generated == completion.token_usage.completion_tokens


@pytest.mark.asyncio
async def test_the_default_stream_yields_the_whole_answer_then_a_final_chunk() -> None:
    llm = EchoLLM()
    await llm.load()
    chunks = [c async for c in llm.stream(HELLO, GenerationConfig(stop=("STOP",)))]
    assert "".join(c.text for c in chunks) == "echo user: Hello "
    assert chunks[-1].finish_reason is FinishReason.STOP
    assert chunks[-1].token_usage is not None


@pytest.mark.asyncio
async def test_using_a_model_before_load_says_to_load_it() -> None:
    llm = EchoLLM()
    with pytest.raises(ModelNotLoadedError, match="load"):
        await llm.generate(HELLO, GREEDY)
    with pytest.raises(ModelNotLoadedError):
        async for _ in llm.stream(HELLO, GREEDY):
            pass


@pytest.mark.asyncio
async def test_concurrent_loads_load_once_and_unload_is_idempotent() -> None:
    llm = EchoLLM()
    await asyncio.gather(*(llm.load() for _ in range(5)))
    assert llm.loads == 1
    assert llm.state is LLMState.LOADED
    await llm.unload()
    await llm.unload()
    assert not llm.is_loaded
    await llm.load()
    assert llm.loads == 2


class BrokenLLM(EchoLLM):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    async def _load_model_implementation(self) -> None:
        raise self.error


@pytest.mark.asyncio
async def test_a_failed_load_is_reported_and_leaves_the_model_unloaded() -> None:
    llm = BrokenLLM(OSError("disk on fire"))
    with pytest.raises(ModelLoadError, match="disk on fire"):
        await llm.load()
    assert llm.state is LLMState.UNLOADED
    own = BrokenLLM(ModelNotFoundError("x/y", "Gone."))
    with pytest.raises(ModelNotFoundError, match="Gone"):
        await own.load()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "messages",
    [
        [],
        "hello",
        [{"role": "wizard", "content": "hi"}],
        [{"role": "user", "content": 3}],
        [{"role": "user"}],
        [{"role": "user", "content": "hi", "extra": 1}],
        ["hi"],
    ],
)
async def test_malformed_conversations_are_rejected(messages: Any) -> None:
    llm = EchoLLM()
    await llm.load()
    with pytest.raises(InvalidMessageError):
        await llm.generate(messages, GREEDY)
    assert llm.prompts == []


@pytest.mark.asyncio
async def test_a_conversation_longer_than_the_context_names_both_numbers() -> None:
    llm = FakeLLM(context_length=40)
    await llm.load()
    long = [{"role": "user", "content": "word " * 50}]
    with pytest.raises(ContextLengthExceededError) as info:
        await llm.generate(long, GenerationConfig(max_new_tokens=10))
    error = info.value
    assert error.context_length == 40
    assert error.max_new_tokens == 10
    assert error.prompt_tokens > 40
    assert "window is 40 tokens" in str(error)
    assert f"needs {error.prompt_tokens} prompt tokens" in str(error)


@pytest.mark.asyncio
async def test_truncation_drops_the_oldest_turns_and_keeps_the_system_prompt() -> None:
    settings = get_settings(model={"truncate_history": True})
    llm = FakeLLM(context_length=45, settings=settings)
    await llm.load()
    messages = [
        {"role": "system", "content": "SYSTEM rules"},
        {"role": "user", "content": "OLDEST " + "x " * 20},
        {"role": "assistant", "content": "old answer " + "y " * 10},
        {"role": "user", "content": "NEWEST question"},
    ]
    await llm.generate(messages, GenerationConfig(max_new_tokens=10))
    prompt = llm.calls[0].prompt
    assert "SYSTEM rules" in prompt
    assert "NEWEST question" in prompt
    assert "OLDEST" not in prompt


@pytest.mark.asyncio
async def test_truncation_still_fails_when_the_newest_message_alone_is_too_long() -> None:
    settings = get_settings(model={"truncate_history": True})
    llm = FakeLLM(context_length=20, settings=settings)
    await llm.load()
    with pytest.raises(ContextLengthExceededError):
        await llm.generate([{"role": "user", "content": "z " * 40}], GREEDY)


class ChatAPILLM(FakeLLM):
    """An adapter of a chat API: it takes the conversation itself, not a formatted prompt."""

    takes_messages = True


@pytest.mark.asyncio
async def test_a_chat_api_adapter_gets_the_messages_it_must_send() -> None:
    llm = ChatAPILLM(context_length=45, settings=get_settings(model={"truncate_history": True}))
    await llm.load()
    messages = [
        {"role": "system", "content": "SYSTEM rules"},
        {"role": "user", "content": "OLDEST " + "x " * 20},
        {"role": "assistant", "content": "old answer " + "y " * 10},
        {"role": "user", "content": "NEWEST question"},
    ]
    short = GenerationConfig(max_new_tokens=10)
    await llm.generate(messages, short)
    async for _ in llm.stream(HELLO, short):
        pass
    # The conversation after truncation, as it would be formatted.
    assert llm.calls[0].kwargs["messages"] == [messages[0], messages[3]]
    assert llm.calls[1].kwargs["messages"] == HELLO
    await llm.complete("raw text", short)
    assert "messages" not in llm.calls[2].kwargs  # a raw prompt has no conversation


@pytest.mark.asyncio
async def test_other_adapters_never_see_messages() -> None:
    llm = FakeLLM()
    await llm.load()
    await llm.generate(HELLO, GREEDY)
    assert "messages" not in llm.calls[0].kwargs


class ExactLLM(EchoLLM):
    """Returns a Completion with its own token counts and finish reason."""

    async def _generate_implementation(self, prompt: str, **kwargs: Any) -> Completion:
        return Completion("abc", FinishReason.LENGTH, TokenUsage(7, 3))

    async def _stream_implementation(self, prompt: str, **kwargs: Any) -> AsyncIterator[str]:
        for piece in ("ab", "c"):
            yield piece


@pytest.mark.asyncio
async def test_exact_completions_are_kept_and_streams_of_text_get_usage() -> None:
    llm = ExactLLM()
    await llm.load()
    completion = await llm.generate(HELLO, GREEDY)
    assert completion == Completion("abc", FinishReason.LENGTH, TokenUsage(7, 3))
    chunks = [c async for c in llm.stream(HELLO, GREEDY)]
    assert [c.text for c in chunks] == ["ab", "c", ""]
    assert chunks[-1].token_usage == TokenUsage(llm.count_tokens(llm.format_prompt(HELLO)), 1)


def test_base_llm_adapters_satisfy_the_protocol_and_report_model_info() -> None:
    llm = EchoLLM(model={"name": "echo"})
    assert isinstance(llm, LLMProtocol)
    info = llm.get_model_info()
    assert info["model_name"] == "echo"
    assert info["backend"] == "EchoLLM"
    assert info["state"] == "unloaded"
    assert info["memory_usage"]["rss_mb"] > 10
    assert "EchoLLM" in repr(llm)
