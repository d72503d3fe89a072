"""Models for the integration tests: a tiny random Gemma 3 (fast) and the embedded GGUF (once)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from gemma_chat import GemmaLLM, get_settings
from gemma_chat.testing.tiny_gemma import build_tiny_gemma

if TYPE_CHECKING:
    from gemma_chat.infrastructure.llm.engine.q8 import Q8Kernels

TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gemma(tmp_path_factory.mktemp("tiny-gemma"))


@pytest.fixture(scope="session")
def tiny_model_with_template_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gemma(
        tmp_path_factory.mktemp("tiny-template"), chat_template=TINY_CHAT_TEMPLATE
    )


@pytest.fixture(scope="session")
def kernels(tmp_path_factory: pytest.TempPathFactory) -> Q8Kernels:
    """The kernels this CPU gets (the auto variant), built once for the session."""
    from gemma_chat.infrastructure.llm.engine.q8 import load_kernels  # torch: only when asked

    built = load_kernels(tmp_path_factory.mktemp("kernels"))
    assert built is not None, "a C compiler is part of the supported set-up"
    return built


def tiny_llm(directory: Path, **model: Any) -> GemmaLLM:
    performance = model.pop("performance", {})
    return GemmaLLM(get_settings(model={"name": str(directory), **model}, performance=performance))


@pytest.fixture(scope="session")
def embedded_llm() -> Iterator[GemmaLLM]:
    """The embedded Gemma 3 270M, loaded once for the whole session (tens of seconds)."""
    llm = GemmaLLM(get_settings())
    asyncio.run(llm.load())
    yield llm
    asyncio.run(llm.unload())
