"""The native tokenizer: ``engine/kernels/bpe.c`` on a compact copy of a BPE ``tokenizer.json``.

``write_vocabulary`` writes ``tokenizer.bpe`` beside ``tokenizer.json`` when a model is
converted, if the tokenizer is of the kind the C code reproduces exactly (SentencePiece-style
BPE with byte fallback, spaces as U+2581, added tokens matched as they are);
``NativeBPETokenizer`` loads it faster than ``tokenizers`` does ``tokenizer.json``, without
holding the GIL, in a fraction of the memory (figures in DEVELOPMENT.md). Nothing here imports
torch.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import struct
from pathlib import Path
from typing import Any

from gemma_chat.domain.errors import ConfigurationError, OutOfMemoryError
from gemma_chat.infrastructure.llm.engine.native import load_library
from gemma_chat.infrastructure.llm.tokenizers.hf_tokenizers import HFTokenizersTokenizer

__all__ = ["VOCABULARY", "NativeBPETokenizer", "open_tokenizer", "write_vocabulary"]

logger = logging.getLogger(__name__)

VOCABULARY = "tokenizer.bpe"
_MAGIC = b"GCBPE1\0\0"
_SPACE = "\u2581"


def _supported(spec: dict[str, Any]) -> bool:
    """Whether bpe.c gives the same ids and text as ``tokenizers`` for this tokenizer.json."""
    model = spec.get("model") or {}
    normalizer = spec.get("normalizer") or {}
    pre = spec.get("pre_tokenizer")
    decoders = [d.get("type") for d in (spec.get("decoder") or {}).get("decoders", [])]
    return (
        model.get("type") == "BPE"
        and model.get("byte_fallback") is True
        and not model.get("dropout")
        and not model.get("continuing_subword_prefix")
        and not model.get("end_of_word_suffix")
        and not model.get("ignore_merges")
        and normalizer.get("type") == "Replace"
        and normalizer.get("pattern") == {"String": " "}
        and normalizer.get("content") == _SPACE
        # splitting on " " after the normalizer replaced every space does nothing
        and (pre is None or (pre.get("type") == "Split" and pre.get("pattern") == {"String": " "}))
        and decoders == ["Replace", "ByteFallback", "Fuse"]
        and all(
            not (t["normalized"] or t["lstrip"] or t["rstrip"] or t["single_word"])
            for t in spec.get("added_tokens", [])
        )
    )


def write_vocabulary(directory: Path) -> bool:
    """Write ``tokenizer.bpe`` from ``directory/tokenizer.json``; False if not supported."""
    spec = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
    if not _supported(spec):
        return False
    model = spec["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    for token in spec.get("added_tokens", []):
        vocab.setdefault(token["content"], token["id"])
    size = max(vocab.values()) + 1
    tokens = [b""] * size
    for text, index in vocab.items():
        tokens[index] = text.encode("utf-8")
    special = bytearray(size)
    added = []
    for token in spec.get("added_tokens", []):
        added.append(token["id"])
        special[token["id"]] = 1 if token["special"] else 0
    merges = []
    for merge in model["merges"]:
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        result = vocab.get(left + right)
        if result is None or left not in vocab or right not in vocab:
            return False
        merges.append((vocab[left], vocab[right], result))
    unk = vocab.get(model.get("unk_token") or "", -1)
    with (directory / VOCABULARY).open("wb") as f:
        f.write(_MAGIC + struct.pack("<4i", size, len(merges), len(added), unk))
        f.write(struct.pack(f"<{size}i", *(len(t) for t in tokens)))
        f.write(b"".join(tokens))
        f.write(bytes(special))
        f.write(struct.pack(f"<{3 * len(merges)}i", *(i for m in merges for i in m)))
        f.write(struct.pack(f"<{len(added)}i", *added))
    return True


class NativeBPETokenizer(HFTokenizersTokenizer):
    """The ``HFTokenizersTokenizer`` interface on ``engine/kernels/bpe.c``."""

    def __init__(self, library: ctypes.CDLL, handle: int, config: dict[str, Any]) -> None:
        super().__init__(None, config)
        self._lib = library
        self._handle = ctypes.c_void_p(handle)
        room = library.bpe_vocab_size(self._handle)
        ids = (ctypes.c_int32 * room)()
        count = library.bpe_special_ids(self._handle, ids, room)
        self._special = frozenset(self._token(i) for i in ids[:count])
        self._directory: Path | None = None  # where tokenizer.json is, when loaded from one

    @classmethod
    def load(
        cls, directory: Path, cache_dir: Path, *, variant: str = "auto"
    ) -> NativeBPETokenizer | None:
        """The tokenizer of a converted model, if it has ``tokenizer.bpe`` and the C code
        builds here: in the kernel variant's library (``variant``, as the setting names it), the
        one the model's kernels load, so that a forced variant is the only one loaded."""
        path = directory / VOCABULARY
        if not path.is_file():
            return None
        try:
            library = load_library(cache_dir, variant=variant)
        except ConfigurationError:  # a variant this CPU cannot run: the model's load says so
            return None
        if library is None:
            return None
        try:
            _declare(library)
        except AttributeError as exc:  # a library without the tokenizer: not the entry's fault
            logger.warning("The native tokenizer is unavailable (%s); using tokenizer.json", exc)
            return None
        handle = library.bpe_load(str(path).encode())
        if not handle:
            logger.warning("Could not read %s; using tokenizer.json", path)
            return None
        tokenizer = cls(library, handle, HFTokenizersTokenizer.read_config(directory))
        tokenizer._directory = directory
        return tokenizer

    def __del__(self) -> None:
        lib = getattr(self, "_lib", None)
        if lib is not None:
            # at interpreter shutdown ctypes may be gone: the memory goes with the process
            with contextlib.suppress(Exception):
                lib.bpe_free(self._handle)

    def _token(self, index: int) -> str:
        text = ctypes.c_char_p()
        length = self._lib.bpe_token_bytes(self._handle, index, ctypes.byref(text))
        data = ctypes.string_at(text, length) if length > 0 else b""
        return data.decode("utf-8", errors="replace")

    @property
    def vocab_size(self) -> int:
        size: int = self._lib.bpe_vocab_size(self._handle)
        return size

    def token_pieces(self) -> list[str]:
        return [self._token(i) for i in range(self.vocab_size)]

    def backend_json(self) -> str | None:
        """The tokenizer.json beside ``tokenizer.bpe`` (what kind of vocabulary it is)."""
        path = self._directory / "tokenizer.json" if self._directory is not None else None
        return path.read_text(encoding="utf-8") if path is not None and path.is_file() else None

    def encode(self, text: str) -> list[int]:
        data = text.encode("utf-8")
        room = len(data) + 16  # at most one id per byte
        out = (ctypes.c_int32 * room)()
        count = self._lib.bpe_encode(self._handle, data, len(data), out, room)
        if count < 0:
            raise OutOfMemoryError(
                f"the tokenizer's buffers for {len(data)} bytes of text could not be allocated"
            )
        return list(out[:count])

    def decode(self, ids: list[int]) -> str:
        array = (ctypes.c_int32 * len(ids))(*ids)
        room = 16 * len(ids) + 16
        out = ctypes.create_string_buffer(room)
        length = self._lib.bpe_decode(self._handle, array, len(ids), 1, out, room)
        if length > room:
            out = ctypes.create_string_buffer(length)
            length = self._lib.bpe_decode(self._handle, array, len(ids), 1, out, length)
        if length < 0:
            raise OutOfMemoryError(
                f"the tokenizer's buffers for {len(ids)} ids could not be allocated"
            )
        return out.raw[:length].decode("utf-8", errors="replace")

    def token_id(self, token: str | None) -> int | None:
        if token is None:
            return None
        data = token.encode("utf-8")
        found: int = self._lib.bpe_token_id(self._handle, data, len(data))
        return found if found >= 0 else None

    @property
    def special_tokens(self) -> frozenset[str]:
        return self._special


def _declare(library: ctypes.CDLL) -> None:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32
    library.bpe_load.argtypes, library.bpe_load.restype = [ctypes.c_char_p], p
    library.bpe_free.argtypes, library.bpe_free.restype = [p], None
    library.bpe_vocab_size.argtypes, library.bpe_vocab_size.restype = [p], i32
    library.bpe_special_ids.argtypes = [p, ctypes.POINTER(i32), i32]
    library.bpe_special_ids.restype = i32
    library.bpe_token_id.argtypes, library.bpe_token_id.restype = [p, ctypes.c_char_p, i64], i32
    library.bpe_token_bytes.argtypes = [p, i32, ctypes.POINTER(ctypes.c_char_p)]
    library.bpe_token_bytes.restype = i64
    library.bpe_encode.argtypes = [p, ctypes.c_char_p, i64, ctypes.POINTER(i32), i64]
    library.bpe_encode.restype = i64
    library.bpe_decode.argtypes = [p, ctypes.POINTER(i32), i64, i32, ctypes.c_char_p, i64]
    library.bpe_decode.restype = i64


def open_tokenizer(directory: Path, variant: str = "auto") -> HFTokenizersTokenizer:
    """A converted model's tokenizer: the native one when it has ``tokenizer.bpe`` (and the C
    code builds here; in the kernel ``variant``'s library), else ``tokenizers`` on
    ``tokenizer.json``."""
    # <cache_dir>/models/<entry>: the compiled library lives in <cache_dir>/kernels.
    native = NativeBPETokenizer.load(directory, directory.parent.parent, variant=variant)
    return native if native is not None else HFTokenizersTokenizer.from_dir(directory)
