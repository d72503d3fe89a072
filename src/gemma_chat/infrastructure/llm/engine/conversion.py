"""A checkpoint converted into the engine's weights one tensor at a time.

Each lean weight is read from the checkpoint (float32), cast or quantized and packed into the
engine's format, written to its place in the converted ``weights.safetensors`` and let go,
so a conversion holds one weight (and its quantized copy) at a time, never the whole model
(DEVELOPMENT.md, "Conversion, tensor by tensor"). Which checkpoint tensors make each lean
weight is the architecture's mapping (``weights.lean_weight_sources``), given to this loop.

The file is the one ``safetensors.torch.save_file`` writes for the same tensors, byte for
byte: its header is computed first from the shapes of an empty model in the target format
(``q8.empty_q8_model``), then each tensor is written at its offset as it is made.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import torch

from gemma_chat.infrastructure.llm.engine.calibration import BlockByBlockImportance
from gemma_chat.infrastructure.llm.engine.config import Gemma3Config
from gemma_chat.infrastructure.llm.engine.model import Gemma3Model
from gemma_chat.infrastructure.llm.engine.q8 import (
    BlockBits,
    Q8Kernels,
    empty_q8_model,
    quantize_packed,
)

__all__ = ["SafetensorsWriter", "convert_weights", "converted_layout"]

# safetensors' names of the dtypes a converted model holds.
_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.uint8: "U8",
    torch.int8: "I8",
}
_ALIGNMENT = 8  # the header's length is padded with spaces to a multiple of this
_BLOCK_WEIGHT = re.compile(r"blocks\.(\d+)\.(\w+)\.weight")
_PROJECTIONS = ("qkv", "o", "gate_up", "down")


class SafetensorsWriter:
    """A safetensors file whose tensors (names, dtypes, shapes known beforehand) are written one
    at a time, in any order, each at its offset; in the layout ``save_file`` gives them (the
    larger dtypes first, then by name), so that the bytes are the same."""

    def __init__(self, path: Path, layout: Mapping[str, tuple[torch.dtype, tuple[int, ...]]]):
        order = sorted(layout, key=lambda n: (-_itemsize(layout[n][0]), n))
        self._places: dict[str, tuple[int, torch.dtype, tuple[int, ...]]] = {}
        header: dict[str, object] = {}
        offset = 0
        for name in order:
            dtype, shape = layout[name]
            size = _itemsize(dtype) * _numel(shape)
            header[name] = {
                "dtype": _DTYPES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + size],
            }
            self._places[name] = (offset, dtype, shape)
            offset += size
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-(len(text) + 8) % _ALIGNMENT)
        self._start = 8 + len(text)
        self._file: BinaryIO = path.open("wb")
        self._file.write(len(text).to_bytes(8, "little") + text)
        self._file.truncate(self._start + offset)
        self._missing = set(layout)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        offset, dtype, shape = self._places[name]
        if tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise ValueError(
                f"{name}: {tensor.dtype} {tuple(tensor.shape)}, expected {dtype} {shape}"
            )
        self._file.seek(self._start + offset)
        self._file.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data)
        self._missing.discard(name)

    def close(self) -> None:
        self._file.close()
        if self._missing:
            raise ValueError(f"tensors never written: {sorted(self._missing)}")


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def converted_layout(
    config: Gemma3Config,
    *,
    dtype: torch.dtype,
    kernels: Q8Kernels | None,
    bits: BlockBits,
    tied: bool,
) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """The converted model's tensors: name -> (dtype, shape), as its state dict holds them
    (a tied head held once: the int8 table, or the float embedding)."""
    with torch.device("meta"):
        model = Gemma3Model(config)
    if kernels is not None:
        empty_q8_model(model, kernels, tied=tied, bits=bits)
    layout: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and tied:
            continue  # the embedding's tensor
        kind = tensor.dtype
        if tensor.is_floating_point() and name.endswith(".weight"):
            kind = torch.float32 if name.endswith("norm.weight") else dtype
        layout[name] = (kind, tuple(tensor.shape))
    return layout


def convert_weights(
    checkpoint: Mapping[str, torch.Tensor],
    sources: Mapping[str, tuple[str, ...]],
    config: Gemma3Config,
    target: Path,
    *,
    dtype: torch.dtype,
    kernels: Q8Kernels | None,
    bits: BlockBits,
    tied: bool,
    calibration_ids: list[int] | None = None,
) -> None:
    """Write the converted weights of ``checkpoint`` (float32 tensors by the checkpoint's names)
    to ``target``: each lean weight of ``sources`` (its name -> the checkpoint tensors it is
    made of, in order: embedding, blocks, final norm, untied head) read, converted and written
    in turn. With ``kernels``, projections become int8 or 4-bit blocks (``bits``), the rest
    ``dtype``; a 4-bit projection's rounding is weighed by its inputs' importance over
    ``calibration_ids`` (``calibration.BlockByBlockImportance``)."""
    layout = converted_layout(config, dtype=dtype, kernels=kernels, bits=bits, tied=tied)
    writer = SafetensorsWriter(target, layout)
    calibrating = kernels is not None and 4 in (bits.head, bits.blocks)
    if calibrating and not calibration_ids:
        raise ValueError("4-bit weights are rounded with the calibration text's tokens: give them")

    def read(name: str) -> torch.Tensor:
        parts = [checkpoint[source].float() for source in sources[name]]
        return (parts[0] if len(parts) == 1 else torch.cat(parts)).contiguous()

    def put_matrix(
        name: str, weight: torch.Tensor, width: int, importance: torch.Tensor | None
    ) -> None:
        """A projection [N, K]: quantized (``<module>.q`` ...) or cast (``<module>.weight``)."""
        module = name.removesuffix(".weight")
        if kernels is None:
            writer.write(name, weight.to(dtype))
            return
        q, scale, factor = quantize_packed(weight, width, kernels, importance)
        for part, tensor in (("q", q), ("scale", scale), ("scale_factor", factor)):
            writer.write(f"{module}.{part}", tensor)

    try:
        calibration: BlockByBlockImportance | None = None
        if calibrating or "embed.weight" in layout:
            table = read("embed.weight")
            if calibrating:
                assert calibration_ids is not None
                calibration = BlockByBlockImportance(config, table, calibration_ids)
            if "embed.weight" in layout:  # float, or the untied table beside an int8 head
                writer.write("embed.weight", table.to(dtype))
            del table
        for layer in range(config.num_layers):
            names = [n for n in sources if (m := _BLOCK_WEIGHT.fullmatch(n)) and int(m[1]) == layer]
            importance: dict[str, torch.Tensor] = {}
            held: dict[str, torch.Tensor] = {}
            if calibration is not None:  # the block runs on the calibration text first
                held = {n: read(n) for n in names}
                prefix = f"blocks.{layer}."
                importance = calibration.block(
                    layer, {n.removeprefix(prefix): t for n, t in held.items()}
                )
            for name in names:
                weight = held.pop(name) if name in held else read(name)
                module = name.removesuffix(".weight")
                if module.rsplit(".", 1)[-1] in _PROJECTIONS:
                    put_matrix(name, weight, bits.blocks, importance.get(module))
                else:
                    writer.write(name, weight.to(torch.float32))
                del weight
        norm = read("norm.weight")
        writer.write("norm.weight", norm)
        head_importance = calibration.head(norm) if calibration is not None else None
        del calibration, norm
        if not tied:
            put_matrix("lm_head.weight", read("lm_head.weight"), bits.head, head_importance)
        elif kernels is not None:  # the int8 (or 4-bit) table is both the head and the lookup
            put_matrix("lm_head.weight", read("embed.weight"), bits.head, head_importance)
    finally:
        writer.close()
