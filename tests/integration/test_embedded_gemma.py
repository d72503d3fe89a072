"""The embedded Gemma 3 270M GGUF through GemmaLLM and InferenceService (loaded once)."""

from __future__ import annotations

import pytest

from gemma_chat import (
    ChatSession,
    FinishReason,
    GemmaLLM,
    GenerationConfig,
    InferenceService,
)

pytestmark = pytest.mark.slow

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.mark.asyncio
async def test_greedy_output_is_fluent_text(embedded_llm: GemmaLLM) -> None:
    completion = await embedded_llm.generate(
        CAPITAL, GenerationConfig(temperature=0, max_new_tokens=24)
    )
    assert "Paris" in completion.text
    assert completion.text == completion.text.strip()
    assert "User:" not in completion.text  # the transcript format's turn ends the answer
    assert completion.finish_reason is FinishReason.STOP


@pytest.mark.asyncio
async def test_streaming_equals_non_streaming_and_never_splits_a_character(
    embedded_llm: GemmaLLM,
) -> None:
    messages = [{"role": "user", "content": "Write a short line with an emoji and some Japanese."}]
    config = GenerationConfig(temperature=0, max_new_tokens=40, repetition_penalty=1.2)
    completion = await embedded_llm.generate(messages, config)
    chunks = [c async for c in embedded_llm.stream(messages, config)]
    assert "".join(c.text for c in chunks) == completion.text
    assert chunks[-1].token_usage == completion.token_usage
    assert not any("\ufffd" in c.text for c in chunks)


@pytest.mark.asyncio
async def test_token_counts_match_the_tokenizer(embedded_llm: GemmaLLM) -> None:
    config = GenerationConfig(temperature=0, max_new_tokens=12)
    messages = [{"role": "user", "content": "Tell me a long story about a dragon."}]
    completion = await embedded_llm.generate(messages, config)
    tokenizer = embedded_llm._generator.tokenizer  # type: ignore[union-attr]
    prompt = embedded_llm.format_prompt(messages)
    ids = tokenizer.encode(prompt)
    assert completion.token_usage.prompt_tokens == len(ids)
    assert ids.count(tokenizer.token_id("<bos>")) == 1
    if completion.finish_reason is FinishReason.LENGTH:
        assert completion.token_usage.completion_tokens == 12
        assert abs(len(tokenizer.encode(completion.text)) - 12) <= 2


@pytest.mark.asyncio
async def test_a_chat_through_the_service_keeps_history_and_usage(embedded_llm: GemmaLLM) -> None:
    session = ChatSession(title="My Chat")
    session.system_prompt = "You are helpful."
    async with InferenceService(llm=embedded_llm) as service:
        first = await service.generate_response(
            session=session, user_message="Hello!", temperature=0.7, seed=1, max_new_tokens=32
        )
        chunks = [
            c
            async for c in service.stream_response(
                session=session, user_message="What is the capital of France?", temperature=0
            )
        ]
        stats = await service.get_statistics()
        info = await service.get_model_info()
        health = await service.health_check()
    assert first.content
    assert "".join(c.text for c in chunks) == session.messages[3].content != ""
    assert [m.role.value for m in session.messages] == ["user", "assistant"] * 2
    assert session.token_usage.total_tokens == (
        first.token_usage.total_tokens + (chunks[-1].token_usage or first.token_usage).total_tokens
    )
    assert stats["request_count"] == 2
    assert info["device"] == "cpu"
    assert (info["quantization"], info["weights"], info["engine"]) == ("int8", "q8", "native")
    assert info["context_length"] == 32768
    assert info["chat_format"] == "transcript"
    assert health["status"] == "healthy"
    assert embedded_llm.is_loaded  # the service did not own it
