"""A GGUF file's metadata and tensors, read without an object per array item.

gguf's ``GGUFReader`` keeps a numpy view of every item of every metadata array: for a Gemma
vocabulary (262,144 tokens, scores and token types) that is millions of small Python objects,
hundreds of MB and seconds to build, and their freed memory stayed with the process that
converted the model (Python's small-object arenas are returned only when wholly empty). This
reads the same layout (GGUF versions 2 and 3, little-endian; each ggml type's block size from
gguf's ``GGML_QUANT_SIZES``) keeping a numeric array as one view of the file, a string array as
its items' offsets, and a tensor as a view of the file's mapping (nothing is read until used).
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any, overload

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quant_shape_to_byte_shape

__all__ = ["GGUFFile", "GGUFTensor", "StringArray"]

_MAGIC = b"GGUF"
_VERSIONS = (2, 3)  # version 1 counted in 32 bits; llama.cpp has not written it since 2023
_STRING, _ARRAY = 8, 9
# the fixed-size value types (gguf's GGUFValueType): struct format
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_UINT32 = 4
_MAX_DIMENSIONS = 4  # ggml's GGML_MAX_DIMS
_MAX_NESTING = 2  # arrays of arrays: llama.cpp writes none; a deeper file is refused
# tensor types stored as values (as GGUFReader maps them); every other one as its blocks' bytes
_VALUES = {
    GGMLQuantizationType.F32: "<f4",
    GGMLQuantizationType.F16: "<f2",
    GGMLQuantizationType.F64: "<f8",
    GGMLQuantizationType.I8: "i1",
    GGMLQuantizationType.I16: "<i2",
    GGMLQuantizationType.I32: "<i4",
    GGMLQuantizationType.I64: "<i8",
}


class StringArray(Sequence[str]):
    """A metadata array of strings, each decoded when asked for."""

    def __init__(self, data: memoryview, offsets: array[int]) -> None:
        self._data = data
        self._offsets = offsets  # each item's length field

    def __len__(self) -> int:
        return len(self._offsets)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        at = self._offsets[index]
        (length,) = struct.unpack_from("<Q", self._data, at)
        return self._data[at + 8 : at + 8 + length].tobytes().decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    tensor_type: GGMLQuantizationType
    shape: tuple[int, ...]  # ggml's order: the fastest-moving dimension first
    # numpy's order: the values (float and integer types) or each row's blocks' bytes
    data: np.ndarray[Any, Any]


class GGUFFile:
    """The metadata (``value``) and ``tensors`` of the GGUF file at ``path``. ``ValueError``
    naming the file when it is not a GGUF this can read (another format, version, byte order or
    type, a header cut short or inconsistent)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self._data: np.ndarray[Any, Any] = np.memmap(self.path, mode="r", dtype=np.uint8)
            self._bytes = self._data.data  # the header's numbers and strings read from here
            self._fields, self.tensors = self._read()
        except struct.error as exc:
            raise ValueError(f"{self.path}: the GGUF header is cut short ({exc})") from None
        except ValueError as exc:  # numpy's, gguf's and UTF-8's own say no file name
            message = str(exc)
            raise ValueError(
                message if str(self.path) in message else f"{self.path}: {message}"
            ) from None

    def value(self, key: str) -> Any:
        """The metadata value under ``key`` (None when absent): a number, a bool, a string, a
        list of numbers, or a ``StringArray``."""
        found = self._fields.get(key)
        return found.tolist() if isinstance(found, np.ndarray) else found

    def names(self) -> list[str]:
        """The metadata's keys, in the file's order."""
        return list(self._fields)

    def _read(self) -> tuple[dict[str, Any], list[GGUFTensor]]:
        data = self._bytes
        if data[:4].tobytes() != _MAGIC:
            raise ValueError(f"{self.path} is not a GGUF file (it does not start with 'GGUF')")
        version, tensor_count, field_count = struct.unpack_from("<IQQ", data, 4)
        if version not in _VERSIONS:
            raise ValueError(
                f"{self.path}: GGUF version {version} (read as little-endian): only versions "
                f"{_VERSIONS[0]} and {_VERSIONS[1]}, little-endian, can be read"
            )
        at = 24
        fields: dict[str, Any] = {}
        for _ in range(field_count):
            key, at = self._string(at)
            (kind,) = struct.unpack_from("<I", data, at)
            if key in fields:
                raise ValueError(f"{self.path}: metadata key {key!r} appears twice")
            if key == "general.alignment" and kind != _UINT32:
                raise ValueError(f"{self.path}: general.alignment is not a uint32")
            fields[key], at = self._value(at + 4, kind)
        table = []
        for _ in range(tensor_count):
            name, at = self._string(at)
            (dimensions,) = struct.unpack_from("<I", data, at)
            if dimensions > _MAX_DIMENSIONS:
                raise ValueError(f"{self.path}: tensor {name!r} has {dimensions} dimensions")
            shape = struct.unpack_from(f"<{dimensions}Q", data, at + 4)
            kind, offset = struct.unpack_from("<IQ", data, at + 4 + 8 * dimensions)
            table.append((name, tuple(int(n) for n in shape), int(kind), int(offset)))
            at += 4 + 8 * dimensions + 12
        if len({name for name, *_ in table}) < len(table):
            raise ValueError(f"{self.path}: a tensor name appears twice")
        alignment = int(fields.get("general.alignment", 32))
        if alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"{self.path}: general.alignment {alignment} is not a power of two")
        start = -(-at // alignment) * alignment
        return fields, [self._tensor(start, *entry) for entry in table]

    def _tensor(
        self, start: int, name: str, shape: tuple[int, ...], kind: int, offset: int
    ) -> GGUFTensor:
        tensor_type = GGMLQuantizationType(kind)  # ValueError: a type gguf does not know
        block, size = GGML_QUANT_SIZES[tensor_type]
        elements = prod(shape)
        nbytes = elements // block * size
        first = start + offset
        if first + nbytes > len(self._data):
            raise ValueError(f"{self.path}: tensor {name!r} runs past the end of the file")
        rows = tuple(reversed(shape))
        raw = self._data[first : first + nbytes]
        values = _VALUES.get(tensor_type)
        if values is not None:
            data = raw.view(values).reshape(rows)
        else:
            data = raw.reshape(quant_shape_to_byte_shape(rows, tensor_type))
        return GGUFTensor(name, tensor_type, shape, data)

    def _string(self, at: int) -> tuple[str, int]:
        (length,) = struct.unpack_from("<Q", self._bytes, at)
        end = at + 8 + length
        if end > len(self._bytes):
            raise ValueError(f"{self.path}: a string runs past the end of the file")
        return self._bytes[at + 8 : end].tobytes().decode("utf-8"), end

    def _value(self, at: int, kind: int, depth: int = 0) -> tuple[Any, int]:
        """The value of type ``kind`` at ``at`` and the offset after it (a numeric array as a
        view of the file: ``value`` makes it a list when asked for)."""
        data = self._bytes
        if kind in _SCALARS:
            fmt = "<" + _SCALARS[kind]
            return struct.unpack_from(fmt, data, at)[0], at + struct.calcsize(fmt)
        if kind == _STRING:
            return self._string(at)
        if kind != _ARRAY:
            raise ValueError(f"{self.path}: a metadata value of unknown type {kind}")
        item, count = struct.unpack_from("<IQ", data, at)
        at += 12
        if item in _SCALARS:
            dtype = np.dtype("<" + _SCALARS[item])
            end = at + count * dtype.itemsize
            if end > len(data):
                raise ValueError(f"{self.path}: an array runs past the end of the file")
            return self._data[at:end].view(dtype), end
        if item == _STRING:
            offsets = array("Q")
            for _ in range(count):  # variable lengths: walked, nothing kept but where each is
                offsets.append(at)
                (length,) = struct.unpack_from("<Q", data, at)
                at += 8 + length
                if at > len(data):
                    raise ValueError(f"{self.path}: an array runs past the end of the file")
            return StringArray(data, offsets), at
        if item != _ARRAY:
            raise ValueError(f"{self.path}: a metadata array of unknown type {item}")
        if depth + 1 >= _MAX_NESTING:
            raise ValueError(f"{self.path}: arrays nested more than {_MAX_NESTING} deep")
        if count > len(data):  # each item takes 12 bytes at least
            raise ValueError(f"{self.path}: an array runs past the end of the file")
        values = []  # arrays of arrays: rare and small (kept nested; GGUFReader flattens them)
        for _ in range(count):
            value, at = self._value(at, item, depth + 1)
            if isinstance(value, np.ndarray | StringArray):
                value = value.tolist() if isinstance(value, np.ndarray) else list(value)
            values.append(value)
        return values, at
