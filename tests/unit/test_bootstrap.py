"""The composition root builds the service from settings; the application takes its ports."""

from __future__ import annotations

import pytest

import gemma_chat
from gemma_chat import InMemorySessionRepository, LLMProtocol, Settings, get_settings
from gemma_chat.application.inference import service as application
from gemma_chat.application.inference.ports import LLMProvider
from gemma_chat.bootstrap import build_service
from gemma_chat.testing import FakeLLM


class OneModelProvider:
    def __init__(self) -> None:
        self.built: list[str] = []

    def create(self, settings: Settings) -> LLMProtocol:
        self.built.append(settings.model.name)
        return FakeLLM(["from the port"], model_name=settings.model.name)


@pytest.mark.asyncio
async def test_the_application_service_runs_on_the_ports_it_is_given() -> None:
    provider = OneModelProvider()
    sessions = InMemorySessionRepository()
    assert isinstance(provider, LLMProvider)
    service = application.InferenceService(get_settings(), sessions=sessions, llms=provider)
    async with service:
        session = await service.create_session()
        response = await service.generate_response(session.id, "hi")
    assert response.content == "from the port"
    assert provider.built == [get_settings().model.name]
    assert await sessions.get(session.id) == session


def test_the_public_service_is_the_application_service_with_default_ports() -> None:
    assert issubclass(gemma_chat.InferenceService, application.InferenceService)
    service = build_service(get_settings(storage={"url": "memory://"}))
    assert isinstance(service, gemma_chat.InferenceService)
    assert service.state is gemma_chat.ServiceState.UNOPENED


@pytest.mark.asyncio
async def test_a_store_the_service_built_is_closed_with_it_and_a_given_one_is_not() -> None:
    closed: list[str] = []

    class ClosingRepository(InMemorySessionRepository):
        async def close(self) -> None:
            closed.append("given")

    async with gemma_chat.InferenceService(llm=FakeLLM(), sessions=ClosingRepository()):
        pass
    assert closed == []
