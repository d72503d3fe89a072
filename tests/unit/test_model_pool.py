"""Several models in one service: on-demand loading and least-recently-used unloading."""

from __future__ import annotations

import asyncio

import pytest

from gemma_chat import (
    ChatSession,
    InferenceService,
    InvalidGenerationConfigError,
    LLMProtocol,
    LLMRegistry,
    ModelNotFoundError,
    Settings,
    get_settings,
)
from gemma_chat.testing import FakeLLM


class Zoo:
    """A registry whose models answer with their own name and report 1,000 MB each."""

    def __init__(self) -> None:
        self.built: dict[str, FakeLLM] = {}
        self.registry = LLMRegistry(fallback=self.build)

    def build(self, settings: Settings) -> LLMProtocol:
        name = settings.model.name
        if name == "missing":
            raise ModelNotFoundError(name)
        llm = FakeLLM([f"I am {name}"], model_name=name, footprint_mb=1000, delay=0.001)
        self.built[name] = llm
        return llm


def service(zoo: Zoo, **performance: int) -> InferenceService:
    settings = get_settings(
        model={"name": "main"},
        performance={"model_memory_budget_mb": 3500, "max_extra_models": 2, **performance},
    )
    return InferenceService(settings, registry=zoo.registry)


@pytest.mark.asyncio
async def test_a_request_can_name_another_model_which_loads_on_demand() -> None:
    zoo = Zoo()
    async with service(zoo) as svc:
        default = await svc.generate_response(ChatSession(), "hi")
        other = await svc.generate_response(ChatSession(), "hi", model="other")
        streamed = [c.text async for c in svc.stream_response(ChatSession(), "hi", model="other")]
        info = await svc.get_model_info()
    assert default.content == "I am main"
    assert other.content == "I am other"
    assert other.model == "other"
    assert "".join(streamed) == "I am other"
    assert zoo.built["other"].load_count == 1
    assert info["other_models_loaded"] == ["other"]
    assert zoo.built["other"].unload_count == 1  # closing the service unloads it


@pytest.mark.asyncio
async def test_idle_models_are_unloaded_least_recently_used_first_beyond_the_budget() -> None:
    zoo = Zoo()
    async with service(zoo) as svc:  # main 1000 MB + at most 2,500 MB more: two others fit
        await svc.generate_response(ChatSession(), "hi", model="a")
        await svc.generate_response(ChatSession(), "hi", model="b")
        await svc.generate_response(ChatSession(), "hi", model="a")  # b is now the oldest
        await svc.generate_response(ChatSession(), "hi", model="c")
        info = await svc.get_model_info()
        assert sorted(info["other_models_loaded"]) == ["a", "c"]
        assert zoo.built["b"].unload_count == 1
        assert zoo.built["main"].is_loaded  # the service's own model always stays


@pytest.mark.asyncio
async def test_a_model_in_use_is_never_unloaded() -> None:
    zoo = Zoo()
    async with service(zoo, max_extra_models=1) as svc:
        await svc.generate_response(ChatSession(), "hi", model="a")
        zoo.built["a"].delay = 0.2
        slow = asyncio.create_task(svc.generate_response(ChatSession(), "hi", model="a"))
        await asyncio.sleep(0.05)
        await svc.generate_response(ChatSession(), "hi", model="b")  # over the limit, a busy
        assert zoo.built["a"].is_loaded
        assert (await slow).content == "I am a"
        await svc.generate_response(ChatSession(), "hi", model="b")
        await svc.generate_response(ChatSession(), "hi", model="c")
    assert zoo.built["a"].unload_count == 1


@pytest.mark.asyncio
async def test_unknown_or_malformed_model_names_get_clear_errors() -> None:
    zoo = Zoo()
    session = ChatSession()
    async with service(zoo) as svc:
        with pytest.raises(ModelNotFoundError, match="missing"):
            await svc.generate_response(session, "hi", model="missing")
        with pytest.raises(InvalidGenerationConfigError, match="model"):
            await svc.generate_response(session, "hi", model="  ")
        assert session.messages == ()
        assert (await svc.generate_response(session, "hi")).content == "I am main"
