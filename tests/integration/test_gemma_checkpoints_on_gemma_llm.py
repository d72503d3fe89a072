"""A downloaded-style Gemma checkpoint on ``GemmaLLM``: the multimodal 4B+ layout's text part
on the native engine, its own chat template and end-of-turn ids, its memory said and checked;
a Gemma 4 checkpoint answering on the native engine what transformers answers."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
import torch

from gemma_chat import GemmaLLM, get_settings
from gemma_chat.domain.errors import ModelTooLargeError
from gemma_chat.domain.models import ChatMessage, GenerationConfig
from gemma_chat.infrastructure.llm.engine import generator
from gemma_chat.infrastructure.llm.engine.generator import refusal
from gemma_chat.infrastructure.llm.loading.model_source import resolve_model_source
from gemma_chat.testing.tiny_gemma import build_tiny_gemma

from .gemma_variants import build_multimodal_model, write_gguf

TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="module")
def multimodal_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A gemma-3-4b-it-like directory: Gemma3ForConditionalGeneration's safetensors, its
    tokenizer, chat_template.jinja and a generation_config.json listing an extra end id."""
    tokenizer_dir = build_tiny_gemma(tmp_path_factory.mktemp("tokenizer"))
    directory = tmp_path_factory.mktemp("gemma-3-4b-it")
    vocab = json.loads((tokenizer_dir / "config.json").read_text())["vocab_size"]
    build_multimodal_model("4b", vocab=vocab).save_pretrained(directory)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, directory / name)
    (directory / "chat_template.jinja").write_text(TEMPLATE)
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 3]}))
    return directory


def _llm(directory: Path, **performance: object) -> GemmaLLM:
    settings = get_settings(
        model={"name": str(directory)}, performance={"engine": "native", **performance}
    )
    return GemmaLLM(settings)


def test_a_multimodal_checkpoint_runs_its_text_part_with_its_own_template(
    multimodal_dir: Path,
) -> None:
    llm = _llm(multimodal_dir)

    async def run() -> tuple[dict[str, object], str, str]:
        await llm.load()
        try:
            info = llm.get_model_info()
            messages: list[ChatMessage] = [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
            ]
            prompt = llm.format_prompt(messages)
            answer = await llm.generate(messages, GenerationConfig(max_new_tokens=8))
            return info, prompt, answer.text
        finally:
            await llm.unload()

    info, prompt, _ = asyncio.run(run())
    assert info["engine"] == "native"
    assert info["architecture"] == "gemma3"
    assert info["checkpoint_format"] == "safetensors"
    assert info["chat_format"] == "template"
    assert "<start_of_turn>system\nBe brief.<end_of_turn>" in prompt
    assert float(info["weights_mb"]) > 0  # type: ignore[arg-type]
    assert float(info["kv_cache_mb_per_1k_tokens"]) > 0  # type: ignore[arg-type]
    assert "engine_note" not in info


def test_the_checkpoints_end_ids_stop_generation(multimodal_dir: Path) -> None:
    llm = _llm(multimodal_dir)
    asyncio.run(llm.load())
    try:
        assert 3 in llm._require_generator().end_ids  # from generation_config.json
    finally:
        asyncio.run(llm.unload())


def test_a_model_over_the_memory_limit_is_refused_before_loading(multimodal_dir: Path) -> None:
    llm = _llm(multimodal_dir, memory_limit_mb=0)
    with pytest.raises(ModelTooLargeError, match=r"MiB of weights.*MEMORY_LIMIT_MB"):
        asyncio.run(llm.load())
    assert not (get_settings().cache_dir / "models").exists()  # nothing converted


def test_a_converted_model_is_checked_from_its_stored_config_not_the_checkpoint_header(
    multimodal_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first load converts; later ones read the config the converted entry keeps (a GGUF's
    # header holds its whole vocabulary: parsing it took hundreds of MB at every start).
    llm = _llm(multimodal_dir)
    asyncio.run(llm.load())
    asyncio.run(llm.unload())

    def header_read(*args: object) -> None:
        raise AssertionError("the checkpoint's header was read again")

    monkeypatch.setattr(generator, "read_text_config", header_read)
    llm = _llm(multimodal_dir)
    asyncio.run(llm.load())
    asyncio.run(llm.unload())
    with pytest.raises(ModelTooLargeError, match=r"MiB of weights.*MEMORY_LIMIT_MB"):
        asyncio.run(_llm(multimodal_dir, memory_limit_mb=1).load())


@pytest.fixture(scope="module")
def gemma4_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A gemma-4-E2B-it-like directory: Gemma4ForCausalLM's safetensors (per-layer inputs, two
    head sizes), its tokenizer, chat_template.jinja and generation_config.json."""
    from .gemma4_variants import build_text_model as build_gemma4

    tokenizer_dir = build_tiny_gemma(tmp_path_factory.mktemp("tokenizer4"))
    directory = tmp_path_factory.mktemp("gemma-4-e2b-it")
    vocab = json.loads((tokenizer_dir / "config.json").read_text())["vocab_size"]
    build_gemma4("ple", vocab=vocab).save_pretrained(directory)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, directory / name)
    (directory / "chat_template.jinja").write_text(TEMPLATE)
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 3]}))
    return directory


def test_a_gemma4_checkpoint_answers_on_the_native_engine_as_transformers_does(
    gemma4_dir: Path,
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert refusal(resolve_model_source(str(gemma4_dir))) is None
    settings = get_settings(
        model={"name": str(gemma4_dir), "dtype": "float32", "quantization": "none"},
        performance={"engine": "native"},
    )
    llm = GemmaLLM(settings)
    messages: list[ChatMessage] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]

    async def run() -> tuple[dict[str, object], str, str]:
        await llm.load()
        try:
            prompt = llm.format_prompt(messages)
            config = GenerationConfig(max_new_tokens=12, temperature=0.0)
            answer = await llm.generate(messages, config)
            return llm.get_model_info(), prompt, answer.text
        finally:
            await llm.unload()

    info, prompt, text = asyncio.run(run())
    assert info["engine"] == "native"
    assert info["architecture"] == "gemma4_text"
    assert info["chat_format"] == "template"
    assert "<start_of_turn>system\nBe brief.<end_of_turn>" in prompt
    assert "engine_note" not in info

    tokenizer = AutoTokenizer.from_pretrained(gemma4_dir)
    model = AutoModelForCausalLM.from_pretrained(gemma4_dir, dtype=torch.float32).eval()
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.generate(
            ids, max_new_tokens=12, do_sample=False, eos_token_id=[1, 3], pad_token_id=0
        )
    expected = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert expected  # a real answer, not an immediate end
    assert text == expected


def test_a_gemma4_checkpoint_converted_to_int8_answers_the_same_from_its_cache(
    gemma4_dir: Path,
) -> None:
    """The first load converts and quantizes (``quantize_gemma4``); the second reads the cached
    entry into empty int8 projections (``empty_quantized_gemma4``): the same answer."""
    settings = get_settings(
        model={"name": str(gemma4_dir), "quantization": "int8"},
        performance={"engine": "native"},
    )
    messages: list[ChatMessage] = [{"role": "user", "content": "Hello there"}]

    async def answer() -> tuple[dict[str, object], str]:
        llm = GemmaLLM(settings)
        await llm.load()
        try:
            result = await llm.generate(
                messages, GenerationConfig(max_new_tokens=12, temperature=0.0)
            )
            return llm.get_model_info(), result.text
        finally:
            await llm.unload()

    info, converted = asyncio.run(answer())
    _, cached = asyncio.run(answer())
    assert info["quantization"] == "int8"
    assert info["architecture"] == "gemma4_text"
    assert converted == cached


def test_gemma4_conversations_answered_together_answer_as_alone(gemma4_dir: Path) -> None:
    """Three greedy conversations at once share the scheduler's steps (rows of one batch):
    each answer is the one it gets alone."""
    settings = get_settings(
        model={"name": str(gemma4_dir), "quantization": "int8"},
        performance={"engine": "native", "max_batch_size": 4},
    )
    prompts = ["Hello there", "What is a cat?", "Tell me about the sea and the sky"]
    config = GenerationConfig(max_new_tokens=10, temperature=0.0)

    async def run() -> tuple[list[str], list[str]]:
        llm = GemmaLLM(settings)
        await llm.load()
        try:
            alone = [
                (await llm.generate([{"role": "user", "content": p}], config)).text for p in prompts
            ]
            together = await asyncio.gather(
                *(llm.generate([{"role": "user", "content": p}], config) for p in prompts)
            )
            return alone, [r.text for r in together]
        finally:
            await llm.unload()

    alone, together = asyncio.run(run())
    assert together == alone


def test_a_ggufs_chat_template_and_end_of_turn_id_are_read(tmp_path: Path) -> None:
    from gemma_chat.infrastructure.llm.engine.checkpoint import GGUFCheckpoint

    from .gemma_variants import build_text_model

    path = write_gguf(build_text_model("1b"), tmp_path / "m.gguf", "Q8_0", chat_template=TEMPLATE)
    checkpoint = GGUFCheckpoint(path)
    assert checkpoint.chat_template == TEMPLATE
    assert checkpoint.config["eos_token_id"] == [1, 106]
    assert resolve_model_source(str(path)).gguf_file == "m.gguf"
    assert refusal(resolve_model_source(str(path))) is None


def test_a_gemma4_ggufs_template_end_ids_and_config_are_read(tmp_path: Path) -> None:
    from gemma_chat.infrastructure.llm.engine.checkpoint import GGUFCheckpoint

    from .gemma4_variants import build_text_model as build_gemma4
    from .gemma4_variants import write_gguf as write_gemma4_gguf

    path = write_gemma4_gguf(
        build_gemma4("moe"), tmp_path / "m.gguf", "Q8_0", chat_template=TEMPLATE
    )
    checkpoint = GGUFCheckpoint(path)
    assert checkpoint.architecture.name == "gemma4_text"
    assert checkpoint.chat_template == TEMPLATE
    assert checkpoint.config["eos_token_id"] == [1, 106]
    assert checkpoint.config["enable_moe_block"] is True
    assert refusal(resolve_model_source(str(path))) is None


@pytest.mark.parametrize("quantization", ["int8", "int4"])
def test_the_cli_info_of_a_converted_gemma4_says_what_runs_and_its_memory(
    gemma4_dir: Path, quantization: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``gemma-chat info`` on a Gemma 4 checkpoint converted a piece at a time: its architecture,
    format and quantization, and weights within the estimate's few percent (the 4-bit head
    counted at its half byte)."""
    from typer.testing import CliRunner

    from gemma_chat.cli import app
    from gemma_chat.infrastructure.llm.engine.architecture import complete_text_config
    from gemma_chat.infrastructure.llm.engine.config import text_config_from_hf
    from gemma_chat.infrastructure.llm.engine.memory import estimate_memory

    monkeypatch.setenv("GEMMA_MODEL__NAME", str(gemma4_dir))
    monkeypatch.setenv("GEMMA_MODEL__QUANTIZATION", quantization)
    monkeypatch.setenv("GEMMA_PERFORMANCE__ENGINE", "native")
    result = CliRunner().invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["engine"] == "native"
    assert info["architecture"] == "gemma4_text"
    assert info["checkpoint_format"] == "safetensors"
    assert info["quantization"] == quantization
    config = text_config_from_hf(
        complete_text_config(json.loads((gemma4_dir / "config.json").read_text()))
    )
    estimate = estimate_memory(
        config,
        quantized=True,
        dtype=torch.float32,
        tied=True,
        head_bits=4 if quantization == "int4" else 8,
    )
    # weights_mb is rounded to 0.1 MB; rows padded to 16 add a few percent
    assert info["weights_mb"] == pytest.approx(estimate.weights_bytes / 2**20, rel=0.05, abs=0.06)
    assert info["kv_cache_mb_per_1k_tokens"] == estimate.describe()["kv_cache_mb_per_1k_tokens"]
