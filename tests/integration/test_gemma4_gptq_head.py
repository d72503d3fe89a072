"""Gemma 4's tied 4-bit head rounded by GPTQ (``conversion.convert_streamed`` given
``calibration.head_statistics``), as Gemma 3's is: fitted on the int8 model's own head inputs
over text and its samples; the same bytes whether the table is rounded whole or in pieces of
rows; its logits closer to the float head's than per-weight rounding's on held-out text; the
converted model still picks the float model's tokens."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from safetensors.torch import load_file

from gemma_chat.infrastructure.llm.engine import conversion, gptq
from gemma_chat.infrastructure.llm.engine.calibration import head_statistics, model_samples
from gemma_chat.infrastructure.llm.engine.checkpoint import SafetensorsCheckpoint
from gemma_chat.infrastructure.llm.engine.config import Gemma4Config, text_config_from_hf
from gemma_chat.infrastructure.llm.engine.conversion import convert_streamed
from gemma_chat.infrastructure.llm.engine.gemma4 import Gemma4Model
from gemma_chat.infrastructure.llm.engine.gptq import gptq_weight4, inverse_factor
from gemma_chat.infrastructure.llm.engine.kv_cache import KVCache
from gemma_chat.infrastructure.llm.engine.q8 import (
    BlockBits,
    Q8Kernels,
    pack_weight4,
)
from gemma_chat.infrastructure.llm.engine.text_models import (
    empty_quantized,
    load_state_dict,
    new_model,
    quantize,
    weight_sources,
)

from .gemma4_variants import (
    build_text_model,
    one_thread,  # noqa: F401 (a fixture)
    one_thread_kernels,  # noqa: F401 (the fixture kernels)
)

if TYPE_CHECKING:
    from gemma_chat.infrastructure.llm.engine.converted_store import ConvertedModelStore
    from gemma_chat.infrastructure.llm.loading.model_source import ModelSource

Q4 = BlockBits(head=4, blocks=8, lookup=8)  # WeightFormat.q4
BOS = 2
VARIANTS = ["ple", "shared-kv", "moe"]


class Case:
    """A tiny random Gemma 4 as safetensors, its float and int8 models, and the GPTQ head's
    statistics from the int8 model over random "text" and its own samples."""

    def __init__(self, variant: str, directory: Path, kernels: Q8Kernels) -> None:
        build_text_model(variant).save_pretrained(directory)
        self.checkpoint = SafetensorsCheckpoint(directory)
        config = text_config_from_hf(self.checkpoint.config)
        assert isinstance(config, Gemma4Config)
        self.config = config
        self.float_model = load_state_dict(config, self.checkpoint, torch.float32)
        self.eight = load_state_dict(config, self.checkpoint, torch.float32)
        quantize(self.eight, kernels, tied=True, bits=BlockBits())
        assert isinstance(self.eight, Gemma4Model)
        self.text = random_text(seed=10, sequences=8, tokens=250)
        self.statistics = head_statistics(self.eight, self.text, model_samples(self.eight, BOS))

    def convert(
        self,
        kernels: Q8Kernels,
        target: Path,
        statistics: tuple[torch.Tensor, torch.Tensor] | None,
        weights_at_a_time: int = 1 << 24,
    ) -> Path:
        convert_streamed(
            self.checkpoint,
            weight_sources(self.config, tied=True),
            self.config,
            target,
            dtype=torch.float32,
            kernels=kernels,
            bits=Q4,
            tied=True,
            weights_at_a_time=weights_at_a_time,
            head_statistics=statistics,
        )
        return target

    def converted_model(self, kernels: Q8Kernels, path: Path) -> Gemma4Model:
        """The converted file read back, as ``ConvertedModelStore`` reads it."""
        with torch.device("meta"):
            model = new_model(self.config)
        empty_quantized(model, kernels, tied=True, bits=Q4)
        model.load_state_dict(load_file(path), assign=True, strict=True)
        assert isinstance(model, Gemma4Model)
        return model.eval()


def random_text(*, seed: int, sequences: int, tokens: int) -> list[list[int]]:
    """Sequences of random tokens after the first: these models' "text"."""
    gen = torch.Generator().manual_seed(seed)
    return [
        [BOS, *torch.randint(10, 500, (tokens,), generator=gen).tolist()] for _ in range(sequences)
    ]


_cases: dict[str, Case] = {}


@pytest.fixture(params=VARIANTS)
def case(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, kernels: Q8Kernels
) -> Case:
    variant = request.param
    if variant not in _cases:
        _cases[variant] = Case(variant, tmp_path_factory.mktemp(variant), kernels)
    return _cases[variant]


def test_the_statistics_are_the_int8_models_head_inputs(case: Case, kernels: Q8Kernels) -> None:
    covariance, importance = case.statistics
    width = case.config.hidden_size
    assert covariance.shape == (width, width)
    assert covariance.dtype == torch.float64
    assert torch.allclose(covariance, covariance.T)
    assert torch.linalg.eigvalsh(covariance).min() > 0  # full rank: 1k+ tokens, 64 features
    assert importance.shape == (width,)
    # over the text alone: the covariance is the mean of x x^T of the int8 model's head
    # inputs, its diagonal the mean squares
    text = [[BOS, 5, 6, 7, 8, 9], [BOS, 9, 8]]
    alone, squares = head_statistics(case.eight, text, [])
    x = head_inputs(case.eight, text).double()
    assert torch.allclose(alone, x.T @ x / x.shape[0])
    assert torch.allclose(torch.diagonal(alone).float(), squares)
    with pytest.raises(ValueError, match="calibration text"):
        head_statistics(case.eight, [], text)


def test_the_gptq_head_is_the_same_bytes_whole_or_in_pieces_of_rows(
    case: Case, kernels: Q8Kernels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fitted = case.statistics
    whole = load_file(case.convert(kernels, tmp_path / "whole.safetensors", fitted))
    factors = []  # H^-1's Cholesky factor: once for the whole head, not once a piece

    def counted(covariance: torch.Tensor, *, damping: float = gptq.DAMPING) -> torch.Tensor:
        factors.append(covariance)
        return inverse_factor(covariance, damping=damping)

    monkeypatch.setattr(conversion, "inverse_factor", counted)
    monkeypatch.setattr(gptq, "inverse_factor", counted)  # and where a piece would compute it
    pieces = load_file(
        case.convert(kernels, tmp_path / "rows.safetensors", fitted, weights_at_a_time=3000)
    )
    assert conversion.rows_at_a_time(case.config.hidden_size, 3000) < case.config.vocab_size
    assert len(factors) == 1
    assert whole.keys() == pieces.keys()
    for name in whole:
        assert torch.equal(whole[name], pieces[name]), name
    # and it is GPTQ's rounding of the whole table with these statistics
    table = case.float_model.lm_head.weight.detach().float()
    expected = pack_weight4(*gptq_weight4(kernels, table, *case.statistics))
    for part, tensor in zip(("q", "scale", "scale_factor"), expected, strict=True):
        assert torch.equal(whole[f"lm_head.{part}"], tensor), part
    plain = load_file(case.convert(kernels, tmp_path / "plain.safetensors", None))
    assert not torch.equal(plain["lm_head.q"], whole["lm_head.q"])
    for name in whole:  # the rest is unchanged
        if not name.startswith("lm_head."):
            assert torch.equal(whole[name], plain[name]), name


def head_inputs(model: Gemma4Model, sequences: list[list[int]]) -> torch.Tensor:
    rows = []
    with torch.inference_mode():
        for ids in sequences:
            n = len(ids)
            cache = KVCache(model.config, slots=1, dtype=model.kv_dtype)
            positions, slots = torch.arange(n), torch.zeros(n, dtype=torch.long)
            rows.append(
                model.head_inputs(torch.tensor(ids), positions, slots, cache, list(range(n)))
            )
    return torch.cat(rows)


def test_the_gptq_heads_logits_are_closer_to_the_float_heads_than_per_weight_rounding(
    case: Case, kernels: Q8Kernels, tmp_path: Path
) -> None:
    """Fitted on the int8 model's head inputs over the text alone: these random models' own
    samples are a few tokens repeated (the MoE one's 2,560 tokens hold 4 distinct ones), and
    fitted to them the rounding does worse elsewhere (a trained model's samples range over
    what it was trained on). Held out: other random text through the float model."""
    model = case.float_model
    assert isinstance(model, Gemma4Model)
    x = head_inputs(model, random_text(seed=99, sequences=4, tokens=150))
    reference = x @ model.lm_head.weight.detach().float().T
    errors = {}
    fitted = head_statistics(case.eight, case.text, [])
    for name, statistics in (("gptq", fitted), ("plain", None)):
        path = case.convert(kernels, tmp_path / name, statistics)
        with torch.inference_mode():
            logits = case.converted_model(kernels, path).lm_head(x).float()
        errors[name] = float(((logits - reference) ** 2).mean())
    # measured: 0.84 to 0.90 of per-weight rounding's
    assert errors["gptq"] < 0.95 * errors["plain"], errors


def test_the_converted_model_with_a_gptq_head_picks_the_float_models_top_token(
    case: Case, kernels: Q8Kernels, tmp_path: Path
) -> None:
    """Teacher-forced on the float path's 64 greedy tokens (the float path gives transformers'
    tokens: test_gemma4_variants.py): the top token agrees on >= 98 % of the steps."""
    steps, float_model = 64, case.float_model
    path = case.convert(kernels, tmp_path / "q4.safetensors", case.statistics)
    converted = case.converted_model(kernels, path)
    prompt = torch.randint(10, 500, (8,), generator=torch.Generator().manual_seed(0)).tolist()
    sequence = list(prompt)
    with torch.inference_mode():
        cache = KVCache(float_model.config, slots=1, dtype=torch.float32)
        logits = float_model(
            torch.tensor([prompt]), torch.arange(8).view(1, -1), torch.tensor([0]), cache
        )[0]
        for position in range(8, 8 + steps):
            sequence.append(int(logits.argmax()))
            step = torch.tensor([[sequence[-1]]])
            logits = float_model(step, torch.tensor([[position]]), torch.tensor([0]), cache)[0]
        cache = KVCache(converted.config, slots=1, dtype=converted.kv_dtype)
        everything = converted(
            torch.tensor([sequence[:-1]]),
            torch.arange(len(sequence) - 1).view(1, -1),
            torch.tensor([0]),
            cache,
            last_only=False,
        )[0]
    chosen = everything[7:].argmax(dim=-1).tolist()  # after the prompt and each token
    agree = sum(int(a == b) for a, b in zip(chosen, sequence[8:], strict=True))
    assert agree / steps >= 0.98


def tiny_gemma4_in_a_store(tmp_path: Path) -> tuple[ConvertedModelStore, ModelSource]:
    """A tiny random Gemma 4 as safetensors with the tiny Gemma 3's tokenizer, and an empty
    store of converted entries."""
    import shutil

    from gemma_chat.infrastructure.llm.engine.converted_store import ConvertedModelStore
    from gemma_chat.infrastructure.llm.loading.model_source import resolve_model_source
    from gemma_chat.testing.tiny_gemma import build_tiny_gemma

    tokenizer_dir = build_tiny_gemma(tmp_path / "tokenizer")
    directory = tmp_path / "gemma-4"
    vocab = json.loads((tokenizer_dir / "config.json").read_text())["vocab_size"]
    build_text_model("ple", vocab=vocab).save_pretrained(directory)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, directory / name)
    return ConvertedModelStore(tmp_path / "cache"), resolve_model_source(str(directory))


def test_the_stores_int4_entry_fits_the_head_on_its_int8_entry(
    kernels: Q8Kernels, tmp_path: Path
) -> None:
    """``ConvertedModelStore`` converts a Gemma 4's int8 entry first, runs it over the
    calibration text and its own samples, and writes the head GPTQ rounds on those inputs."""
    from transformers import AutoTokenizer

    from gemma_chat.infrastructure.llm.engine.calibration import (
        calibration_sequences,
        calibration_text,
    )
    from gemma_chat.infrastructure.llm.engine.converted_store import WEIGHTS, WeightFormat

    store, source = tiny_gemma4_in_a_store(tmp_path)
    directory = source.directory
    four = store.load_or_convert(source, WeightFormat.q4(kernels), progress=False)
    assert store.has(source, WeightFormat.q8(kernels))  # converted first, kept
    eight = store.load_or_convert(source, WeightFormat.q8(kernels), progress=False).model
    assert isinstance(eight, Gemma4Model)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    ids = tokenizer(calibration_text())["input_ids"]
    bos = tokenizer.bos_token_id
    text = calibration_sequences(ids[1:] if ids[0] == bos else ids, bos)
    statistics = head_statistics(eight, text, model_samples(eight, bos))
    checkpoint = SafetensorsCheckpoint(directory)
    config = text_config_from_hf(checkpoint.config)
    expected = tmp_path / "expected.safetensors"
    convert_streamed(
        checkpoint,
        weight_sources(config, tied=True),
        config,
        expected,
        dtype=torch.float32,
        kernels=kernels,
        bits=Q4,
        tied=True,
        head_statistics=statistics,
    )
    assert (four.directory / WEIGHTS).read_bytes() == expected.read_bytes()


def test_the_int4_conversion_estimate_holds_the_int8_model_run_first(
    case: Case, kernels: Q8Kernels
) -> None:
    from gemma_chat.infrastructure.llm.engine.generator import _weights_bytes
    from gemma_chat.infrastructure.llm.engine.memory import estimate_memory

    config = case.config
    four = estimate_memory(config, quantized=True, dtype=torch.float32, tied=True, head_bits=4)
    eight = estimate_memory(config, quantized=True, dtype=torch.float32, tied=True)
    assert eight.weights_bytes <= _weights_bytes(case.eight) <= eight.weights_bytes * 1.05
    assert four.conversion_bytes >= eight.weights_bytes > four.weights_bytes
    # or the pieces read, with the head's float32 scales kept until its last piece
    scales = config.vocab_size * config.hidden_size // 32 * 4
    assert four.converting_bytes == max(eight.converting_bytes + scales, eight.weights_bytes)


def test_an_int4_entry_of_the_rounding_before_gemma_4s_gptq_head_is_converted_again(
    kernels: Q8Kernels, tmp_path: Path
) -> None:
    """Gemma 4's int4 entries keyed ``-v3.3`` were rounded per weight: one such entry (here
    the current one under that key, which would load) is neither loaded nor kept."""
    from gemma_chat.infrastructure.llm.engine.converted_store import FORMAT_VERSION, WeightFormat

    store, source = tiny_gemma4_in_a_store(tmp_path)
    current = store.load_or_convert(source, WeightFormat.q4(kernels), progress=False).directory
    old = current.with_name(current.name.rsplit("-v", 1)[0] + f"-v{FORMAT_VERSION}.3")
    current.rename(old)
    assert not store.has(source, WeightFormat.q4(kernels))
    again = store.load_or_convert(source, WeightFormat.q4(kernels), progress=False)
    assert again.directory == current
    assert not old.exists()  # removed once the current entry is written
