"""Gemma 4 converts a piece of a weight at a time (``conversion.convert_streamed``) into the
bytes the whole-model conversion wrote (every weight read into the model in float32, quantized,
saved by safetensors): float, int8 and 4-bit-head formats, tied and untied, from safetensors
and from GGUF, with every variant's weights (per-layer inputs, shared keys and values with
k = v, experts); whole weights or pieces of a few rows; and it holds no more of the checkpoint
than the memory estimate counts (``conversion.largest_read``)."""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

import pytest
import torch

from gemma_chat.infrastructure.llm.engine.checkpoint import (
    Checkpoint,
    GGUFCheckpoint,
    SafetensorsCheckpoint,
)
from gemma_chat.infrastructure.llm.engine.config import Gemma4Config, text_config_from_hf
from gemma_chat.infrastructure.llm.engine.conversion import convert_streamed, largest_read
from gemma_chat.infrastructure.llm.engine.q8 import BlockBits, Q8Kernels
from gemma_chat.infrastructure.llm.engine.text_models import (
    load_state_dict,
    quantize,
    weight_sources,
)

from .conversion_checks import assert_same_bytes, save_whole
from .gemma4_variants import build_text_model, write_gguf

FORMATS = {
    "float32": (torch.float32, False, BlockBits()),
    "bfloat16": (torch.bfloat16, False, BlockBits()),
    "int8": (torch.float32, True, BlockBits()),
    "int4-head": (torch.float32, True, BlockBits(head=4, blocks=8, lookup=8)),  # WeightFormat.q4
    "int4-everywhere": (torch.float32, True, BlockBits(head=4, blocks=4)),
}
# Weights read at a time: the default (every tiny weight whole), and a few rows (the tables,
# projections and experts in several pieces, the last one short).
PIECES = {"whole": 1 << 24, "rows": 3000}


def _untied(variant: str) -> Any:
    model = build_text_model(variant)
    model.config.tie_word_embeddings = False
    with torch.no_grad():
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone() * 0.5)
    return model


CHECKPOINTS = ["ple-safetensors", "shared-kv-safetensors", "moe-untied-safetensors"]
CHECKPOINTS += ["ple-gguf-Q8_0", "moe-gguf-Q4_0"]
_built: dict[str, Checkpoint] = {}


@pytest.fixture(params=CHECKPOINTS)
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    name = request.param
    if name not in _built:
        directory = tmp_path_factory.mktemp(name)
        variant = name.split("-")[0] if not name.startswith("shared") else "shared-kv"
        if "gguf" in name:
            quant = name.rsplit("-", 1)[-1]
            path = write_gguf(build_text_model(variant), directory / "m.gguf", quant)
            _built[name] = GGUFCheckpoint(path)
        else:
            model = _untied(variant) if "untied" in name else build_text_model(variant)
            model.save_pretrained(directory)
            _built[name] = SafetensorsCheckpoint(directory)
    return _built[name]


def whole_model_conversion(
    checkpoint: Checkpoint,
    config: Gemma4Config,
    target: Path,
    *,
    dtype: torch.dtype,
    kernels: Q8Kernels | None,
    bits: BlockBits,
    tied: bool,
) -> None:
    """Gemma 4's conversion as it was (``converted_store._convert_whole``): every weight read
    into the model in float32, quantized, then saved."""
    lean = load_state_dict(config, checkpoint, dtype)
    if kernels is not None:
        quantize(lean, kernels, tied=tied, bits=bits)
    save_whole(lean, target)


@pytest.mark.parametrize("pieces", list(PIECES))
@pytest.mark.parametrize("name", list(FORMATS))
def test_a_piece_at_a_time_writes_the_bytes_of_the_whole_model_conversion(
    name: str, pieces: str, checkpoint: Checkpoint, kernels: Q8Kernels, tmp_path: Path
) -> None:
    dtype, quantized, bits = FORMATS[name]
    config = text_config_from_hf(checkpoint.config)
    assert isinstance(config, Gemma4Config)
    tied = bool(checkpoint.config["tie_word_embeddings"])
    chosen = kernels if quantized else None
    old_path, new_path = tmp_path / "old.safetensors", tmp_path / "new.safetensors"
    whole_model_conversion(
        checkpoint, config, old_path, dtype=dtype, kernels=chosen, bits=bits, tied=tied
    )
    convert_streamed(
        checkpoint,
        weight_sources(config, tied=tied),
        config,
        new_path,
        dtype=dtype,
        kernels=chosen,
        bits=bits,
        tied=tied,
        weights_at_a_time=PIECES[pieces],
    )
    assert_same_bytes(new_path, old_path)


def test_the_writer_takes_rows_in_place_and_refuses_rows_that_do_not_fit(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from gemma_chat.infrastructure.llm.engine.conversion import SafetensorsWriter

    table = torch.arange(30, dtype=torch.float32).view(10, 3)
    writer = SafetensorsWriter(tmp_path / "w.safetensors", {"t": (torch.float32, (10, 3))})
    with pytest.raises(ValueError, match="expected"):
        writer.write_rows("t", 0, table[:4].T.contiguous())
    with pytest.raises(ValueError, match=r"rows 8\.\.12 of 10"):
        writer.write_rows("t", 8, table[:4])
    writer.write_rows("t", 6, table[6:])
    writer.write_rows("t", 0, table[:6])
    writer.close()
    assert torch.equal(load_file(tmp_path / "w.safetensors")["t"], table)


class CountedCheckpoint(Checkpoint):
    """A checkpoint that counts the bytes of the tensors it gave that are still alive."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self.config = checkpoint.config
        self.alive = 0
        self.most_alive = 0

    def _counted(self, tensor: torch.Tensor) -> torch.Tensor:
        size = tensor.numel() * tensor.element_size()
        self.alive += size
        self.most_alive = max(self.most_alive, self.alive)
        weakref.finalize(tensor, self._gone, size)
        return tensor

    def _gone(self, size: int) -> None:
        self.alive -= size

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._counted(self.checkpoint[name])

    def shape_of(self, name: str) -> tuple[int, ...]:
        return self.checkpoint.shape_of(name)

    def read_rows(self, name: str, index: int | None, start: int, stop: int) -> torch.Tensor:
        return self._counted(self.checkpoint.read_rows(name, index, start, stop))

    def __iter__(self) -> Any:
        return iter(self.checkpoint)

    def __len__(self) -> int:
        return len(self.checkpoint)


@pytest.mark.parametrize("name", ["int8", "int4-head", "bfloat16"])
def test_a_conversion_holds_the_estimates_largest_read_of_the_checkpoint_at_a_time(
    name: str, kernels: Q8Kernels, tmp_path: Path
) -> None:
    """The checkpoint's float32 tensors alive at once are one piece of one weight: exactly the
    ``largest_read`` the memory estimate's conversion peak is counted from, far less than the
    model (the per-layer inputs' table, the largest tensor, goes in pieces)."""
    dtype, quantized, bits = FORMATS[name]
    build_text_model("ple").save_pretrained(tmp_path / "ckpt")
    checkpoint = SafetensorsCheckpoint(tmp_path / "ckpt")
    config = text_config_from_hf(checkpoint.config)
    assert isinstance(config, Gemma4Config)
    counted = CountedCheckpoint(checkpoint)
    weights = 3000
    convert_streamed(
        counted,
        weight_sources(config, tied=True),
        config,
        tmp_path / "w.safetensors",
        dtype=dtype,
        kernels=kernels if quantized else None,
        bits=bits,
        tied=True,
        weights_at_a_time=weights,
    )
    assert counted.most_alive == 4 * largest_read(config, weights)
    assert counted.alive == 0
    table = config.ple_vocab_size * config.num_layers * config.ple_size
    assert counted.most_alive < 4 * table / 16  # a sixteenth of its largest tensor
