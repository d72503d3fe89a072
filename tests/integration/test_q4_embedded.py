"""int4 on the embedded Gemma 3 270M: greedy answers the same alone and batched, and the next
token the int8 model would pick at most positions of a few texts."""

from __future__ import annotations

import asyncio
import difflib
import heapq
import shutil
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch

from gemma_chat import GemmaLLM, GenerationConfig, get_settings
from gemma_chat.infrastructure.llm.engine.kv_cache import KVCache
from gemma_chat.infrastructure.llm.engine.model import Gemma3Model

pytestmark = pytest.mark.slow

GREEDY = GenerationConfig(temperature=0, max_new_tokens=24)
PROMPTS = [
    "Write a story about a dragon.",
    "List some fruits.",
    "Describe the sea.",
]
# a few standard-library docstrings (not the calibration text's modules), ~1,000 tokens
TEXTS = [module.__doc__ or "" for module in (difflib, heapq, shutil, tempfile, zipfile)]


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def loaded(cache_dir: Path, quantization: str) -> GemmaLLM:
    llm = GemmaLLM(
        get_settings(
            cache_dir=str(cache_dir),
            model={"chat_format": "gemma", "quantization": quantization},
            performance={"engine": "native", "max_batch_size": 4},
        )
    )
    asyncio.run(llm.load())
    return llm


@pytest.fixture(scope="module")
def int4(embedded_llm: GemmaLLM) -> GemmaLLM:
    llm = loaded(Path(embedded_llm.settings.cache_dir), "int4")
    yield llm  # type: ignore[misc]
    asyncio.run(llm.unload())


def test_the_model_info_says_int4_runs(int4: GemmaLLM) -> None:
    info = int4.get_model_info()
    assert (info["engine"], info["quantization"], info["weights"]) == ("native", "int4", "q4")


def test_greedy_answers_are_the_same_alone_and_batched(int4: GemmaLLM) -> None:
    async def run() -> tuple[list[str], list[str]]:
        alone = [(await int4.generate(chat(p), GREEDY)).text for p in PROMPTS]
        together = await asyncio.gather(*(int4.generate(chat(p), GREEDY) for p in PROMPTS))
        return alone, [c.text for c in together]

    alone, together = asyncio.run(run())
    assert all(alone)
    assert together == alone


def next_tokens(model: Gemma3Model, ids: list[int]) -> torch.Tensor:
    cache = KVCache(model.config, slots=1, dtype=model.kv_dtype)
    tokens = torch.tensor([ids])
    with torch.inference_mode():
        logits = model(
            tokens, torch.arange(len(ids)).view(1, -1), torch.tensor([0]), cache, last_only=False
        )
    return logits[0].argmax(-1)


def test_the_next_token_agrees_with_int8s_at_most_positions(
    int4: GemmaLLM, embedded_llm: GemmaLLM
) -> None:
    int8 = embedded_llm._generator
    assert embedded_llm.get_model_info()["quantization"] == "int8"
    four = int4._generator
    agree = total = 0
    for text in TEXTS:
        ids = [2, *four.tokenizer.encode(text)[:255]]  # type: ignore[union-attr]
        a, b = next_tokens(int8.model, ids), next_tokens(four.model, ids)  # type: ignore[union-attr]
        agree += int((a == b).sum())
        total += len(ids)
    # measured: 685 of 759 with the GPTQ head (612 with per-weight rounding; DEVELOPMENT.md,
    # "4-bit weights"); a wrong nibble order or scale gives next to none
    assert agree / total >= 0.75, f"{agree} of {total}"
