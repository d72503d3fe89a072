"""The lean GGUF reader (``gguf_file.GGUFFile``) reads what gguf's ``GGUFReader`` reads, without
an object per array item; a file it cannot read is a ValueError that says why."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from gemma_chat.infrastructure.llm.engine.checkpoint import GGUFCheckpoint
from gemma_chat.infrastructure.llm.engine.converted_store import save_tokenizer
from gemma_chat.infrastructure.llm.engine.generator import refusal
from gemma_chat.infrastructure.llm.engine.gguf_file import GGUFFile, StringArray
from gemma_chat.infrastructure.llm.loading.model_source import ModelSource, resolve_model_source
from gemma_chat.shared.config.settings import Settings

QUANTIZED = ("Q8_0", "Q4_0", "Q5_1")  # quantized by gguf; the K types' blocks random bytes
BLOCK_BYTES = ("Q4_K", "Q6_K")


def write_every_kind(path: Path) -> Path:
    """A GGUF with metadata of every value type and tensors stored as values and as blocks."""
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_uint8("t.u8", 200)
    writer.add_int8("t.i8", -100)
    writer.add_uint16("t.u16", 60_000)
    writer.add_int16("t.i16", -30_000)
    writer.add_uint32("t.u32", 4_000_000_000)
    writer.add_int32("t.i32", -2_000_000_000)
    writer.add_float32("t.f32", 0.1)
    writer.add_uint64("t.u64", 2**63 + 5)
    writer.add_int64("t.i64", -(2**62))
    writer.add_float64("t.f64", 0.1)
    writer.add_bool("t.bool", True)
    writer.add_string("t.string", "naïve ✓")
    writer.add_string("t.empty", "")
    writer.add_array("t.strings", ["a", "", "ü" * 300, "<start_of_turn>"])
    writer.add_array("t.ints", [1, -2, 3])
    writer.add_array("t.floats", [0.5, 1.5])
    writer.add_array("t.bools", [True, False])
    writer.add_array("t.no_items", [])
    rng = np.random.default_rng(0)
    writer.add_tensor("f32", rng.standard_normal((3, 5)).astype(np.float32))
    writer.add_tensor("f16", rng.standard_normal((4, 8)).astype(np.float16))
    writer.add_tensor("vector", rng.standard_normal(7).astype(np.float32))
    for name in QUANTIZED:
        kind = gguf.GGMLQuantizationType[name]
        values = rng.standard_normal((6, 256)).astype(np.float32)
        writer.add_tensor(name, gguf.quants.quantize(values, kind), raw_dtype=kind)
    for name in BLOCK_BYTES:
        kind = gguf.GGMLQuantizationType[name]
        size = gguf.GGML_QUANT_SIZES[kind][1]
        writer.add_tensor(name, rng.integers(0, 256, (3, 2 * size), dtype=np.uint8), raw_dtype=kind)
    bf16 = gguf.quants.quantize(
        rng.standard_normal((2, 4)).astype(np.float32), gguf.GGMLQuantizationType.BF16
    )
    writer.add_tensor("bf16", bf16, raw_dtype=gguf.GGMLQuantizationType.BF16)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def assert_reads_as_gguf_reader(path: Path) -> GGUFFile:
    lean, reader = GGUFFile(path), gguf.GGUFReader(path)
    expected = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    got = {}
    for key in lean.names():
        value = lean.value(key)
        got[key] = list(value) if isinstance(value, StringArray) else value
    assert got == expected
    assert [t.name for t in lean.tensors] == [t.name for t in reader.tensors]
    for mine, theirs in zip(lean.tensors, reader.tensors, strict=True):
        assert mine.tensor_type == theirs.tensor_type
        assert mine.shape == tuple(int(n) for n in theirs.shape)
        assert mine.data.dtype == theirs.data.dtype
        assert mine.data.shape == theirs.data.shape
        assert np.array_equal(mine.data, theirs.data)
    return lean


def test_every_value_type_and_tensor_reads_as_gguf_reads_it(tmp_path: Path) -> None:
    lean = assert_reads_as_gguf_reader(write_every_kind(tmp_path / "kinds.gguf"))
    assert lean.value("t.missing") is None
    strings = lean.value("t.strings")
    assert isinstance(strings, StringArray)
    assert len(strings) == 4
    assert strings[-1] == "<start_of_turn>"
    assert strings[1:3] == ["", "ü" * 300]
    assert lean.value("t.u64") == 2**63 + 5
    assert lean.value("t.bool") is True


def test_a_model_written_as_llama_cpp_writes_it_reads_the_same(tmp_path: Path) -> None:
    from .gemma_variants import build_text_model, write_gguf

    path = write_gguf(build_text_model("1b"), tmp_path / "m.gguf", "Q8_0", chat_template="{{ x }}")
    assert_reads_as_gguf_reader(path)


def test_the_embedded_models_vocabulary_costs_no_object_per_token() -> None:
    # gguf's GGUFReader made a numpy view per vocabulary item: hundreds of MB of small objects
    source = resolve_model_source(Settings().model.name)
    assert source.gguf_path is not None
    blocks = sys.getallocatedblocks()
    lean = GGUFFile(source.gguf_path)
    tokens = lean.value("tokenizer.ggml.tokens")
    assert sys.getallocatedblocks() - blocks < 20_000
    assert len(tokens) == len(lean.value("tokenizer.ggml.scores")) == 262_144
    assert tokens[lean.value("tokenizer.ggml.bos_token_id")] == "<bos>"
    assert lean.value("general.architecture") == "gemma3"


def header(version: int = 3, tensors: int = 0, fields: int = 0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, tensors, fields)


def string(text: str) -> bytes:
    return struct.pack("<Q", len(text.encode())) + text.encode()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"PK\x03\x04 a zip, not a model" + bytes(32), "not a GGUF file"),
        (header(version=1), "GGUF version 1"),
        (header(version=3 << 24), "only versions 2 and 3, little-endian"),
        (header(fields=1) + string("general.architecture"), "cut short"),
        (header(fields=1) + string("a") + struct.pack("<I", 13), "unknown type 13"),
        (
            header(fields=1) + string("a") + struct.pack("<IIQ", 9, 8, 10**6) + string("x"),
            "cut short",
        ),
        (header(fields=1) + struct.pack("<Q", 10**9) + b"abc", "string runs past the end"),
        (b"", "empty file"),
        (
            header(fields=1) + string("a") + struct.pack("<IIQQ", 9, 8, 2, 2**64 - 1) + bytes(16),
            "array runs past the end",
        ),
        (
            header(fields=1) + string("a") + struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * 50,
            "nested",
        ),
        (header(fields=2) + (string("a") + struct.pack("<IB", 0, 1)) * 2, "'a' appears twice"),
        (header(fields=1) + string("general.alignment") + string("32"), "not a uint32"),
        (header(tensors=1) + string("w") + struct.pack("<I", 2**32 - 1), "4294967295 dimensions"),
        (
            (header(tensors=2) + (string("w") + struct.pack("<IQIQ", 1, 32, 0, 0)) * 2)
            + bytes(512),
            "appears twice",
        ),
        (header(tensors=1) + string("w") + struct.pack("<IQIQ", 1, 4, 99, 0), "99 is not a valid"),
        (header(tensors=1) + string("w") + struct.pack("<IQIQ", 1, 10**6, 0, 0), "past the end"),
        (
            header(fields=1) + string("general.alignment") + struct.pack("<II", 4, 12),
            "not a power of two",
        ),
    ],
)
def test_a_file_it_cannot_read_says_why(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        GGUFFile(path)
    source = ModelSource(directory=tmp_path, gguf_file="bad.gguf")
    assert (refusal(source) or "").startswith("its GGUF file does not read")


def test_a_gemma_gguf_tokenizer_is_saved_as_auto_tokenizer_builds_it_without_gguf_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoTokenizer

    # transformers reads a GGUF's tokenizer with its own lean reader since 5.x's
    # integrations.gguf.reader; before it, GGUFReader on that path too
    pytest.importorskip("transformers.integrations.gguf.reader")
    source = resolve_model_source(Settings().model.name)
    assert source.gguf_file is not None
    checkpoint = GGUFCheckpoint(source.directory / source.gguf_file)
    auto = AutoTokenizer.from_pretrained(
        source.directory, gguf_file=source.gguf_file, local_files_only=True
    )
    if not getattr(auto, "chat_template", None):
        auto.chat_template = checkpoint.chat_template
    auto.save_pretrained(tmp_path / "auto")

    def whole_header_read(*_: object, **__: object) -> None:
        raise AssertionError("gguf's GGUFReader read the whole header")

    monkeypatch.setattr(gguf, "GGUFReader", whole_header_read)
    monkeypatch.setattr(gguf.gguf_reader, "GGUFReader", whole_header_read)
    save_tokenizer(source, checkpoint, tmp_path / "ours")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "ours" / name).read_bytes() == (tmp_path / "auto" / name).read_bytes()


@pytest.mark.parametrize(
    ("config", "names"),
    [
        (None, False),
        ('{"bos_token": "<bos>"}', False),
        ('{"tokenizer_class": "PreTrainedTokenizerFast"}', True),
        ('{"auto_map": {"AutoTokenizer": ["x.Tok", null]}}', True),
        ("{not json", True),  # AutoTokenizer reads it and says what is wrong
    ],
)
def test_a_tokenizer_config_beside_the_gguf_that_names_a_class_decides_it(
    tmp_path: Path, config: str | None, names: bool
) -> None:
    from gemma_chat.infrastructure.llm.engine.converted_store import _names_tokenizer_class

    if config is not None:
        (tmp_path / "tokenizer_config.json").write_text(config)
    source = ModelSource(directory=tmp_path, gguf_file="m.gguf")
    assert _names_tokenizer_class(source) is names
