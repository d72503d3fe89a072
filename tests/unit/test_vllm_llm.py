"""VLLMLLM with a hand-written fake ``vllm`` module: engine arguments, sampling parameters,
prompts, streaming, aborting, and the clear errors without CUDA or without vLLM."""

from __future__ import annotations

import sys
import types
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import pytest

from gemma_chat import (
    ConfigurationError,
    ContextLengthExceededError,
    FinishReason,
    GenerationConfig,
    InferenceError,
    ModelNotLoadedError,
    OutOfMemoryError,
    TokenUsage,
    get_settings,
)
from gemma_chat.infrastructure.llm.adapters import vllm as adapter
from gemma_chat.infrastructure.llm.adapters.vllm import VLLMLLM, sampling_arguments

HI = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


class FakeTokenizer:
    bos_token = "<bos>"

    def __init__(self, chat_template: str | None = "{{ messages }}") -> None:
        self.chat_template = chat_template

    def apply_chat_template(
        self, messages: list[dict[str, str]], *, tokenize: bool, add_generation_prompt: bool
    ) -> str:
        assert not tokenize
        assert add_generation_prompt
        turns = "".join(f"<{m['role']}>{m['content']}" for m in messages)
        return f"<bos>{turns}<assistant>"

    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]:
        ids = [len(word) for word in text.split()]
        return [1, *ids] if add_special_tokens else ids


@dataclass
class Output:
    text: str
    token_ids: list[int]
    finish_reason: str | None


@dataclass
class RequestOutput:
    outputs: list[Output]
    finished: bool


@dataclass
class FakeEngine:
    arguments: Any
    answer: list[str] = field(default_factory=lambda: ["Hello", " there", ", friend"])
    finish_reason: str = "stop"
    max_model_len: int = 4096
    tokenizer: Any = field(default_factory=FakeTokenizer)
    async_tokenizer: bool = False
    requests: list[tuple[Any, Any, str]] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    shut_down: bool = False
    healthy: Exception | None = None

    @property
    def model_config(self) -> Any:
        return types.SimpleNamespace(max_model_len=self.max_model_len)

    def get_tokenizer(self) -> Any:
        if self.async_tokenizer:

            async def tokenizer() -> Any:
                return self.tokenizer

            return tokenizer()
        return self.tokenizer

    async def generate(
        self, prompt: Any, params: Any, request_id: str
    ) -> AsyncIterator[RequestOutput]:
        self.requests.append((prompt, params, request_id))
        text = ""
        for index, piece in enumerate(self.answer):
            text += piece  # vLLM's default: each output holds the whole answer so far
            last = index == len(self.answer) - 1
            yield RequestOutput(
                [Output(text, list(range(index + 1)), self.finish_reason if last else None)],
                finished=last,
            )

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def check_health(self) -> None:
        if self.healthy is not None:
            raise self.healthy

    def shutdown(self) -> None:
        self.shut_down = True


class FakeArguments:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


class FakeSamplingParams:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


class Engines(list[FakeEngine]):
    """The engines the fake module built; ``options`` go to the next ones."""

    options: dict[str, Any]


@pytest.fixture
def engines(monkeypatch: pytest.MonkeyPatch) -> Engines:
    """A fake ``vllm`` module on a machine with CUDA; the engines it built."""
    built = Engines()
    built.options = {}

    def from_engine_args(arguments: FakeArguments) -> FakeEngine:
        built.append(FakeEngine(arguments, **built.options))
        return built[-1]

    module = types.ModuleType("vllm")
    module.__version__ = "0.33.0"  # type: ignore[attr-defined]
    module.AsyncEngineArgs = FakeArguments  # type: ignore[attr-defined]
    module.SamplingParams = FakeSamplingParams  # type: ignore[attr-defined]
    module.AsyncLLMEngine = types.SimpleNamespace(  # type: ignore[attr-defined]
        from_engine_args=from_engine_args
    )
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(adapter, "cuda_available", lambda: True)
    return built


def vllm_llm(name: str = "vllm:google/gemma-3-1b-it", **sections: Any) -> VLLMLLM:
    model = {"name": name, **sections.pop("model", {})}
    return VLLMLLM(get_settings(model=model, **sections))


# -- settings and parameters -------------------------------------------------------------------


def test_the_prefix_names_the_model_vllm_loads() -> None:
    assert vllm_llm().vllm_model == "google/gemma-3-1b-it"
    with pytest.raises(ConfigurationError, match="names no model"):
        vllm_llm("vllm:")


def test_engine_arguments_come_from_the_settings() -> None:
    llm = vllm_llm(
        model={"dtype": "bfloat16", "context_length": 8192, "revision": "main"},
        vllm={
            "tensor_parallel_size": 4,
            "pipeline_parallel_size": 2,
            "gpu_memory_utilization": 0.8,
            "quantization": "awq",
        },
    )
    assert llm.engine_arguments() == {
        "model": "google/gemma-3-1b-it",
        "tensor_parallel_size": 4,
        "pipeline_parallel_size": 2,
        "gpu_memory_utilization": 0.8,
        "dtype": "bfloat16",
        "trust_remote_code": False,
        "revision": "main",
        "max_model_len": 8192,
        "quantization": "awq",
    }


def test_unset_options_are_left_to_vllm() -> None:
    arguments = vllm_llm().engine_arguments()
    assert "max_model_len" not in arguments
    assert "quantization" not in arguments
    assert "revision" not in arguments


def test_the_generation_config_maps_onto_sampling_params() -> None:
    config = GenerationConfig(
        temperature=0.3,
        top_p=0.9,
        top_k=0,
        max_new_tokens=12,
        stop=("\n\n",),
        seed=7,
        repetition_penalty=1.1,
    )
    assert sampling_arguments(config.to_dict()) == {
        "temperature": 0.3,
        "top_p": 0.9,
        "top_k": 0,  # off, as in vLLM
        "max_tokens": 12,
        "stop": ["\n\n"],
        "seed": 7,
        "repetition_penalty": 1.1,
    }


# -- what a machine lacks ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_without_cuda_loading_says_so_and_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(adapter, "cuda_available", lambda: False)
    llm = vllm_llm()
    with pytest.raises(ConfigurationError, match=r"CUDA.*GEMMA_REMOTE__BASE_URL"):
        await llm.load()
    assert not llm.is_loaded


@pytest.mark.asyncio
async def test_without_vllm_loading_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(adapter, "cuda_available", lambda: True)
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(ConfigurationError, match=r"pip install 'gemma-chat\[vllm\]'"):
        await vllm_llm().load()


def test_cuda_is_asked_of_torch() -> None:
    import torch

    assert adapter.cuda_available() is torch.cuda.is_available()


# -- generation --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_loading_builds_the_engine_from_the_settings(engines: list[FakeEngine]) -> None:
    llm = vllm_llm(vllm={"tensor_parallel_size": 2})
    await llm.load()
    assert engines[0].arguments.kwargs["tensor_parallel_size"] == 2
    assert llm.context_length == 4096  # the engine's max_model_len
    info = llm.get_model_info()
    assert (info["backend"], info["vllm_version"], info["chat_format"]) == (
        "vllm",
        "0.33.0",
        "template",
    )
    await llm.unload()
    assert engines[0].shut_down
    with pytest.raises(ModelNotLoadedError):
        await llm.generate(HI, GenerationConfig())


@pytest.mark.asyncio
async def test_the_chat_template_prompt_is_sent_as_token_ids_without_a_second_bos(
    engines: list[FakeEngine],
) -> None:
    llm = vllm_llm()
    await llm.load()
    completion = await llm.generate(HI, GenerationConfig(max_new_tokens=5, top_k=3))
    prompt, params, _ = engines[0].requests[0]
    expected = FakeTokenizer().encode(
        "<bos><system>Be brief.<user>Hi<assistant>", add_special_tokens=False
    )
    assert prompt == {"prompt_token_ids": expected}
    assert params.kwargs["max_tokens"] == 5
    assert params.kwargs["top_k"] == 3
    assert completion.text == "Hello there, friend"
    assert completion.finish_reason is FinishReason.STOP
    assert completion.token_usage == TokenUsage(len(expected), 3)


@pytest.mark.asyncio
async def test_a_raw_prompt_gets_its_bos_from_the_tokenizer(engines: list[FakeEngine]) -> None:
    llm = vllm_llm()
    await llm.load()
    await llm.complete("Once upon", GenerationConfig())
    assert engines[0].requests[0][0] == {"prompt_token_ids": [1, 4, 4]}


@pytest.mark.asyncio
async def test_a_stream_yields_what_each_output_added(engines: list[FakeEngine]) -> None:
    llm = vllm_llm()
    await llm.load()
    engines[0].finish_reason = "length"
    chunks = [c async for c in llm.stream(HI, GenerationConfig())]
    assert [c.text for c in chunks] == ["Hello", " there", ", friend", ""]
    assert chunks[-1].finish_reason is FinishReason.LENGTH
    assert chunks[-1].token_usage is not None
    assert chunks[-1].token_usage.completion_tokens == 3
    assert engines[0].aborted == []  # finished: nothing to abort


@pytest.mark.asyncio
async def test_a_reader_that_stops_early_aborts_the_request(engines: list[FakeEngine]) -> None:
    llm = vllm_llm()
    await llm.load()
    async with aclosing(llm.stream(HI, GenerationConfig())) as stream:
        async for _ in stream:
            break
    assert engines[0].aborted == [engines[0].requests[0][2]]


@pytest.mark.asyncio
async def test_without_a_chat_template_the_configured_chat_format_is_used(
    engines: Engines,
) -> None:
    # A coroutine get_tokenizer, too, as older vLLM releases had it.
    engines.options = {"tokenizer": FakeTokenizer(chat_template=None), "async_tokenizer": True}
    llm = vllm_llm("vllm:acme/base-model")
    await llm.load()
    assert llm.get_model_info()["chat_format"] == "transcript"
    assert llm.format_prompt(HI).endswith("User: Hi\nAssistant:")


@pytest.mark.asyncio
async def test_a_prompt_over_the_engines_window_is_refused_before_it_is_sent(
    engines: list[FakeEngine],
) -> None:
    llm = vllm_llm()
    await llm.load()
    engines[0].max_model_len = 20
    with pytest.raises(ContextLengthExceededError, match="context window is 20 tokens"):
        await llm.generate([{"role": "user", "content": "word " * 30}], GenerationConfig())
    assert engines[0].requests == []


@pytest.mark.asyncio
async def test_health_is_vllms_own_check(engines: list[FakeEngine]) -> None:
    llm = vllm_llm()
    await llm.load()
    await llm.check_health()
    engines[0].healthy = RuntimeError("EngineDeadError")
    with pytest.raises(InferenceError, match="EngineDeadError"):
        await llm.check_health()


def test_cuda_out_of_memory_is_an_out_of_memory_error() -> None:
    import torch

    error = vllm_llm().map_error(torch.OutOfMemoryError("CUDA out of memory. Tried 2 GiB"))
    assert isinstance(error, OutOfMemoryError)
    assert "Tried 2 GiB" in str(error)
    assert type(vllm_llm().map_error(ValueError("x"))) is InferenceError
