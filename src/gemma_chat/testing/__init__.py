"""Test doubles for applications built on gemma-chat.

``FakeLLM`` is a real ``BaseLLM`` that answers from a script instead of a model, and records
what it was asked, so tests assert on state instead of mocks::

    llm = FakeLLM(["Hi there!"])
    async with InferenceService(llm=llm) as service:
        await service.generate_response(session=ChatSession(), user_message="Hello")
    assert llm.calls[0].messages[-1]["content"] == "Hello"
"""

from gemma_chat.testing.fake_llm import FakeLLM, GenerationCall, create_mock_llm

__all__ = ["FakeLLM", "GenerationCall", "create_mock_llm"]
