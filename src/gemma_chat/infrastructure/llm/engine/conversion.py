"""A checkpoint converted into the engine's weights one tensor at a time.

Each lean weight is read from the checkpoint (float32), cast or quantized and packed into the
engine's format, written to its place in the converted ``weights.safetensors`` and let go,
so a conversion holds one weight (and its quantized copy) at a time, never the whole model
(DEVELOPMENT.md, "Conversion, tensor by tensor"). Which checkpoint tensors make each lean
weight is the architecture's mapping (``text_models.weight_sources``), given to the loop.
Gemma 3 goes through ``convert_weights`` (its 4-bit rounding calibrated block by block; an
int8 vocabulary table read in pieces of rows, as below); Gemma 4 through ``convert_streamed``,
which reads every large weight in pieces of rows, so its peak is a piece (``WEIGHTS_AT_A_TIME``
weights), whatever the largest tensor.

The file is the one ``safetensors.torch.save_file`` writes for the same tensors, byte for
byte: its header is computed first from the shapes of an empty model in the target format
(``converted_layout``), then each tensor is written at its offset as it is made.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_left
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import torch

from gemma_chat.infrastructure.llm.engine.calibration import BlockByBlockImportance
from gemma_chat.infrastructure.llm.engine.checkpoint import Checkpoint
from gemma_chat.infrastructure.llm.engine.config import Gemma3Config, TextConfig
from gemma_chat.infrastructure.llm.engine.gemma4 import Part
from gemma_chat.infrastructure.llm.engine.gptq import gptq_weight4, inverse_factor
from gemma_chat.infrastructure.llm.engine.q8 import (
    BLOCK,
    LANES,
    BlockBits,
    Q8Kernels,
    _block_scales,
    _float16_scales,
    _scale_factor,
    pack_weight,
    pack_weight4,
    quantize_packed,
    quantize_weight,
    quantize_weight4,
)
from gemma_chat.infrastructure.llm.engine.text_models import empty_quantized, new_model

__all__ = [
    "WEIGHTS_AT_A_TIME",
    "SafetensorsWriter",
    "convert_streamed",
    "convert_weights",
    "converted_layout",
    "largest_read",
    "rows_at_a_time",
]

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
_PACKED_PARTS = (".q", ".scale", ".scale_factor")  # of a quantized projection (``Q8Linear``)
# Weights read (float32) and converted at a time by ``convert_streamed``: a larger weight goes
# in pieces of whole tiles of rows, so a conversion's temporaries are those of this many
# weights (as ``q8.quantize_packed``'s), whatever the model's largest tensor.
WEIGHTS_AT_A_TIME = 1 << 24


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
        self._rows: dict[str, int] = {}  # of tensors written in rows: how many so far

    def write(self, name: str, tensor: torch.Tensor) -> None:
        offset, dtype, shape = self._places[name]
        if tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise ValueError(
                f"{name}: {tensor.dtype} {tuple(tensor.shape)}, expected {dtype} {shape}"
            )
        self._file.seek(self._start + offset)
        self._file.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data)
        self._missing.discard(name)

    def write_rows(self, name: str, start: int, rows: torch.Tensor) -> None:
        """Rows ``[start, start + len(rows))`` of a tensor (along its first dimension); the
        tensor counts as written once every row has been."""
        offset, dtype, shape = self._places[name]
        if rows.dtype != dtype or tuple(rows.shape[1:]) != shape[1:]:
            raise ValueError(
                f"{name}: rows {rows.dtype} {tuple(rows.shape)}, expected {dtype} {shape}"
            )
        if not 0 <= start <= start + rows.shape[0] <= shape[0]:
            raise ValueError(f"{name}: rows {start}..{start + rows.shape[0]} of {shape[0]}")
        row_bytes = _itemsize(dtype) * _numel(shape[1:])
        self._file.seek(self._start + offset + start * row_bytes)
        self._file.write(rows.contiguous().reshape(-1).view(torch.uint8).numpy().data)
        self._rows[name] = self._rows.get(name, 0) + rows.shape[0]
        if self._rows[name] == shape[0]:
            self._missing.discard(name)

    def close(self, *, complete: bool = True) -> None:
        """Close the file; ``complete``: check that every tensor was written (a conversion
        that failed closes it without, so that its own error is the one raised)."""
        self._file.close()
        if complete and self._missing:
            raise ValueError(f"tensors never written: {sorted(self._missing)}")


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def converted_layout(
    config: TextConfig,
    *,
    dtype: torch.dtype,
    kernels: Q8Kernels | None,
    bits: BlockBits,
    tied: bool,
) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """The converted model's tensors: name -> (dtype, shape), as its state dict holds them
    (a tied head held once: the int8 table, or the float embedding): the model of ``config``
    on the meta device, given its int8/4-bit projections (``text_models.empty_quantized``: each
    architecture says which of its projections are quantized). Norms are float32, the other
    float tensors ``dtype``; a quantized projection's parts (``.q``, ``.scale``,
    ``.scale_factor``) as the int8 kernels hold them."""
    with torch.device("meta"):
        model = new_model(config)
    if kernels is not None:
        empty_quantized(model, kernels, tied=tied, bits=bits)
    layout: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and tied:
            continue  # the embedding's tensor
        kind = tensor.dtype
        if tensor.is_floating_point() and not name.endswith(_PACKED_PARTS):
            kind = torch.float32 if name.endswith("norm.weight") else dtype
        layout[name] = (kind, tuple(tensor.shape))
    return layout


def convert_weights(
    checkpoint: Checkpoint,
    sources: Mapping[str, tuple[str, ...]],
    config: Gemma3Config,
    target: Path,
    *,
    dtype: torch.dtype,
    kernels: Q8Kernels | None,
    bits: BlockBits,
    tied: bool,
    calibration_ids: list[int] | None = None,
    head_sequences: tuple[list[list[int]], list[list[int]]] | None = None,
) -> None:
    """Write the converted weights of ``checkpoint`` (float32 tensors by the checkpoint's names)
    to ``target``: each lean weight of ``sources`` (its name -> the checkpoint tensors it is
    made of, in order: embedding, blocks, final norm, untied head) read, converted and written
    in turn. With ``kernels``, projections become int8 or 4-bit blocks (``bits``), the rest
    ``dtype``; a 4-bit projection's rounding is weighed by its inputs' importance over
    ``calibration_ids`` (``calibration.BlockByBlockImportance``). ``head_sequences``: the
    calibration text's sequences and the model's samples, over which a tied 4-bit head's inputs
    are taken for its GPTQ rounding (``gptq.py``; without them, per-weight rounding)."""
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

    def put_head(
        source: str, module: str, importance: torch.Tensor | None, width: int = bits.head
    ) -> None:
        """A vocabulary-sized matrix: int8 a piece of rows at a time, so that its float32
        values and their rounding's temporaries are never all held at once (the largest
        weight by far); 4-bit (its rounding is weighed by ``importance``) and float whole."""
        if width == 4 or kernels is None:
            put_matrix(f"{module}.weight", read(source), width, importance)
        else:
            rows = _Rows(checkpoint, sources[source])
            _quantize_rows(writer, module, rows, width, kernels, WEIGHTS_AT_A_TIME)

    try:
        calibration: BlockByBlockImportance | None = None
        text_runs: list[BlockByBlockImportance] = []  # the head's GPTQ inputs, block by block
        sample_runs: list[BlockByBlockImportance] = []
        table_rows = _Rows(checkpoint, sources["embed.weight"])
        gptq = tied and bits.head == 4  # a tied 4-bit head: rounded by GPTQ on its inputs
        if calibrating:
            assert calibration_ids is not None
            text, samples = ([], []) if head_sequences is None or not gptq else head_sequences
            # only the rows of the tokens the runs look up, read a piece of rows at a time
            table, (ids, *renumbered) = _rows_looked_up(
                table_rows, [calibration_ids, *text, *samples]
            )
            calibration = BlockByBlockImportance(config, table, ids)
            text_runs = [BlockByBlockImportance(config, table, r) for r in renumbered[: len(text)]]
            sample_runs = [
                BlockByBlockImportance(config, table, r) for r in renumbered[len(text) :]
            ]
            del table
        if "embed.weight" in layout:  # float, or the untied table beside an int8 head
            kind, shape = layout["embed.weight"]
            _cast_rows(writer, "embed.weight", table_rows, shape, kind, WEIGHTS_AT_A_TIME)
        for layer in range(config.num_layers):
            names = [n for n in sources if (m := _BLOCK_WEIGHT.fullmatch(n)) and int(m[1]) == layer]
            importance: dict[str, torch.Tensor] = {}
            held: dict[str, torch.Tensor] = {}
            if calibration is not None:  # the block runs on the calibration text first
                held = {n: read(n) for n in names}
                prefix = f"blocks.{layer}."
                block_weights = {n.removeprefix(prefix): t for n, t in held.items()}
                importance = calibration.block(layer, block_weights)
                for run in text_runs + sample_runs:
                    run.block(layer, block_weights)
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
        text_inputs = [run.head_inputs(norm) for run in text_runs]
        sample_inputs = [run.head_inputs(norm) for run in sample_runs]
        del calibration, norm, text_runs, sample_runs
        if not tied:
            put_head("lm_head.weight", "lm_head", head_importance)
        elif kernels is not None and text_inputs:  # GPTQ head, lookups from their own table
            text_x = torch.cat(text_inputs)
            x = torch.cat([text_x, *sample_inputs]).double()
            covariance = x.T @ x / x.shape[0]
            del x, sample_inputs
            # a piece of rows at a time (GPTQ's rows are independent given H: the same values
            # as the whole table's, without its float32 copies and updates all held at once)
            statistics = (covariance, (text_x * text_x).mean(dim=0))
            _gptq_rows(writer, table_rows, kernels, statistics, WEIGHTS_AT_A_TIME)
        elif kernels is not None:  # the int8 (or 4-bit) table is the head (and the lookup)
            put_head("embed.weight", "lm_head", head_importance)
        if tied and kernels is not None and bits.lookup == 8:  # the lookups' own int8 table
            put_head("embed.weight", "embed_lookup.table", None, width=8)
    except BaseException:
        writer.close(complete=False)
        raise
    writer.close()


def _rows_looked_up(rows: _Rows, runs: list[list[int]]) -> tuple[torch.Tensor, list[list[int]]]:
    """The rows of an embedding table that the token ids of ``runs`` look up, as a compact
    table, and each run's ids renumbered into it: the same embeddings, without the whole float
    table (read a piece of rows at a time)."""
    wanted = sorted({i for ids in runs for i in ids})
    if wanted and not 0 <= wanted[0] <= wanted[-1] < rows.shape[0]:
        raise ValueError(f"token ids outside the embedding table's {rows.shape[0]} rows")
    step = rows_at_a_time(_numel(rows.shape[1:]), WEIGHTS_AT_A_TIME)
    found: list[torch.Tensor] = []
    at = 0
    for start in range(0, rows.shape[0], step):
        stop = bisect_left(wanted, start + step, at)
        if stop > at:
            piece = rows.read(start, start + step)
            found.append(piece[torch.tensor(wanted[at:stop]) - start])  # a copy: indexed
            del piece
            at = stop
    index = {token: position for position, token in enumerate(wanted)}
    table = torch.cat(found) if found else torch.empty((0, *rows.shape[1:]))
    return table, [[index[i] for i in ids] for ids in runs]


def rows_at_a_time(width: int, weights: int = WEIGHTS_AT_A_TIME) -> int:
    """Rows of a weight ``width`` wide read at a time: whole tiles of rows, about ``weights``
    weights (one tile at least)."""
    return max(LANES, weights // max(width, 1) // LANES * LANES)


def largest_read(config: TextConfig, weights: int = WEIGHTS_AT_A_TIME) -> int:
    """The most weights ``convert_streamed`` reads from a checkpoint at once (float32): of each
    float weight of the model of ``config``, all of it or ``rows_at_a_time`` of its rows."""
    with torch.device("meta"):
        model = new_model(config)
    most = 0
    for tensor in model.state_dict().values():
        if tensor.dim() < 2:
            most = max(most, tensor.numel())
        else:
            n, width = tensor.shape[0], _numel(tuple(tensor.shape[1:]))
            most = max(most, min(n, rows_at_a_time(width, weights)) * width)
    return most


class _Rows:
    """A lean weight's rows read from the checkpoint tensors it is made of (concatenated along
    their first dimension), a range at a time."""

    def __init__(self, checkpoint: Checkpoint, parts: tuple[Part, ...]) -> None:
        self._checkpoint = checkpoint
        self._parts: list[tuple[str, int | None, int]] = []  # name, slice, rows (0: a scalar)
        self.shape: tuple[int, ...] = ()
        rows = 0
        for part in parts:
            name, index = (part, None) if isinstance(part, str) else part
            shape = checkpoint.shape_of(name)
            if index is not None:
                shape = shape[1:]
            self._parts.append((name, index, shape[0] if shape else 0))
            rows += shape[0] if shape else 1
            self.shape = (rows, *shape[1:])

    def read(self, start: int, stop: int) -> torch.Tensor:
        pieces, first = [], 0
        for name, index, rows in self._parts:
            if rows == 0:  # a scalar, whole
                pieces.append(self._checkpoint[name].reshape(1))
                first += 1
                continue
            lo, hi = max(start, first), min(stop, first + rows)
            if lo < hi:
                pieces.append(self._checkpoint.read_rows(name, index, lo - first, hi - first))
            first += rows
        return (pieces[0] if len(pieces) == 1 else torch.cat(pieces)).contiguous()


def convert_streamed(
    checkpoint: Checkpoint,
    sources: Mapping[str, tuple[Part, ...]],
    config: TextConfig,
    target: Path,
    *,
    dtype: torch.dtype,
    kernels: Q8Kernels | None,
    bits: BlockBits,
    tied: bool,
    weights_at_a_time: int = WEIGHTS_AT_A_TIME,
    head_statistics: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """Write the converted weights of ``checkpoint`` to ``target`` a piece of a weight at a
    time: each lean weight of ``sources`` (its name -> the checkpoint tensors it is made of)
    read ``rows_at_a_time`` rows at a time, cast or quantized, written and let go. What each
    becomes is the converted layout's (``converted_layout``: the architecture's quantized
    projections in int8 or 4-bit blocks, norms float32, the rest ``dtype``); a weight it does
    not hold is skipped (the float table of a tied int8 head, which the head is made from).
    A quantized weight of several pieces is read twice: first for the whole matrix's scale
    factor (``q8._scale_factor``), then rounded and packed piece by piece with it, so the bytes
    are those of quantizing it whole. The 4-bit rounding is unweighted (no calibration), but
    for a tied 4-bit head given ``head_statistics``: the covariance [E, E] of its inputs and
    their features' mean squares [E] (``calibration.head_statistics``), by which it is rounded
    with GPTQ (``gptq.py``), a piece of rows at a time (``_gptq_rows``)."""
    if head_statistics is not None and not (tied and bits.head == 4 and kernels is not None):
        raise ValueError("the head's statistics are for a tied 4-bit head's GPTQ rounding")
    layout = converted_layout(config, dtype=dtype, kernels=kernels, bits=bits, tied=tied)
    made_of = dict(sources)
    if tied:  # an int8/4-bit head (and its lookups' table) is the embedding table
        made_of["lm_head.weight"] = sources["embed.weight"]
        made_of["embed_lookup.table.weight"] = sources["embed.weight"]
    writer = SafetensorsWriter(target, layout)
    try:
        for name, parts in made_of.items():
            module = name.removesuffix(".weight")
            packed = next((m for m in (module, f"{module}.table") if f"{m}.q" in layout), None)
            if packed is None and name not in layout:
                continue
            rows = _Rows(checkpoint, parts)
            if packed is not None:
                width = 8 if layout[f"{packed}.q"][1][2] == 8 else 4  # 64-byte groups per block
                if packed == "lm_head" and head_statistics is not None:
                    assert kernels is not None
                    _gptq_rows(writer, rows, kernels, head_statistics, weights_at_a_time)
                else:
                    _quantize_rows(writer, packed, rows, width, kernels, weights_at_a_time)
                continue
            kind, shape = layout[name]
            if len(shape) < 2:  # norms, scalars: whole, in the layout's shape
                writer.write(name, rows.read(0, rows.shape[0]).reshape(shape).to(kind))
                continue
            _cast_rows(writer, name, rows, shape, kind, weights_at_a_time)
    except BaseException:
        writer.close(complete=False)
        raise
    writer.close()


def _cast_rows(
    writer: SafetensorsWriter,
    name: str,
    rows: _Rows,
    shape: tuple[int, ...],
    kind: torch.dtype,
    weights_at_a_time: int,
) -> None:
    """A float weight of ``shape`` [N, ...] cast to ``kind`` and written a piece of rows at a
    time (``rows_at_a_time``)."""
    step = rows_at_a_time(_numel(shape[1:]), weights_at_a_time)
    for start in range(0, shape[0], step):
        piece = rows.read(start, start + step)
        writer.write_rows(name, start, piece.reshape(-1, *shape[1:]).to(kind))
        del piece


def _quantize_rows(
    writer: SafetensorsWriter,
    module: str,
    rows: _Rows,
    bits: int,
    kernels: Q8Kernels | None,
    weights_at_a_time: int,
) -> None:
    """``module``'s packed parts (``.q``, ``.scale``, ``.scale_factor``) from a float weight
    [N, K] read in pieces of whole tiles: the bytes of ``quantize_packed`` on the whole."""
    n, width = rows.shape[0], _numel(rows.shape[1:])
    step = rows_at_a_time(width, weights_at_a_time)
    if bits == 4 and kernels is None:
        raise ValueError("4-bit weights are rounded by the kernels: give them")

    def rounded(piece: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if bits == 8:
            return quantize_weight(piece)
        assert kernels is not None
        return quantize_weight4(kernels, piece)

    if n <= step:  # one piece: as a whole
        parts = quantize_packed(rows.read(0, n).reshape(n, width), bits, kernels)
        for part, tensor in zip(("q", "scale", "scale_factor"), parts, strict=True):
            writer.write(f"{module}.{part}", tensor)
        return
    largest = []  # each piece's largest scale: the whole matrix's factor is of their largest
    for start in range(0, n, step):
        piece = rows.read(start, start + step).reshape(-1, width)
        if bits == 8:
            largest.append(_block_scales(piece.reshape(piece.shape[0], -1, BLOCK)).max())
        else:
            largest.append(rounded(piece)[1].abs().max())
        del piece
    mult = _scale_factor(torch.stack(largest))
    pack = pack_weight if bits == 8 else pack_weight4
    for start in range(0, n, step):
        q, scale = rounded(rows.read(start, start + step).reshape(-1, width))
        packed, halves, _ = pack(q, scale, mult=mult)
        writer.write_rows(f"{module}.q", start // LANES, packed)
        writer.write_rows(f"{module}.scale", start // LANES, halves)
        del q, scale, packed, halves
    writer.write(f"{module}.scale_factor", torch.tensor([mult], dtype=torch.float32))


# GPTQ's updates are matrix products over a piece's rows, and BLAS gives other bits for a
# product only a few rows wide (measured: under 13): a shorter last piece joins the one before
_SHORTEST_GPTQ_PIECE = 4 * LANES


def _gptq_rows(
    writer: SafetensorsWriter,
    rows: _Rows,
    kernels: Q8Kernels,
    statistics: tuple[torch.Tensor, torch.Tensor],
    weights_at_a_time: int,
) -> None:
    """``lm_head``'s packed 4-bit parts rounded by GPTQ for inputs of ``statistics``
    (covariance, importance), ``rows_at_a_time`` rows at a time: GPTQ's rows are independent
    given the covariance, so the pieces' values are those of the whole. Each piece's values are
    packed and written as they come (the packed values do not depend on the float16 factor);
    the float32 scales [N, K/32] are kept and packed at the end, with the whole matrix's
    factor. H^-1's Cholesky factor is the covariance's alone: computed once, for every piece."""
    covariance, importance = statistics
    cholesky = inverse_factor(covariance)
    n, width = rows.shape[0], _numel(rows.shape[1:])
    step = rows_at_a_time(width, weights_at_a_time)
    scales = torch.zeros((-(-n // LANES) * LANES, width // BLOCK), dtype=torch.float32)
    starts = list(range(0, n, step))
    if len(starts) > 1 and n - starts[-1] < _SHORTEST_GPTQ_PIECE:
        starts.pop()  # the short rest joins the piece before it
    for start, stop in zip(starts, [*starts[1:], n], strict=True):
        piece = rows.read(start, stop).reshape(-1, width)
        q, scale = gptq_weight4(kernels, piece, covariance, importance, cholesky=cholesky)
        del piece
        packed, _, _ = pack_weight4(q, scale)
        writer.write_rows("lm_head.q", start // LANES, packed)
        scales[start : start + scale.shape[0]] = scale
        del q, scale, packed
    mult = _scale_factor(scales)
    halves, factor = _float16_scales(scales, scales.shape[0] // LANES, width // BLOCK, mult)
    writer.write("lm_head.scale", halves)
    writer.write("lm_head.scale_factor", factor)
