"""Converted models on disk, so that only the first load pays for the GGUF conversion.

Turning a GGUF into a model through transformers is slow (DEVELOPMENT.md, "Cold start").
The first load does that once and stores the lean model's weights (safetensors), its
config and the tokenizer under ``<cache_dir>/models/<key>``, keyed by the GGUF's sha256, the
dtype and this format's version; later loads read them back without transformers. Each entry is
written to a temporary directory and renamed into place, and carries a manifest with the size
and CRC-32 of every file: a partial or corrupt entry is detected, deleted and rebuilt.

Processes may share a cache directory (server workers, a CLI beside a server): an entry is
built while holding a file lock beside it (``<key>.lock``), so a second process waits for the
first and then reads what it wrote instead of converting again. The lock is the operating
system's (flock), released when its holder dies, so a killed process leaves no lock behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout

from gemma_chat.domain.errors import CorruptEntryError, ModelLoadError
from gemma_chat.infrastructure.heap import give_back_freed_heap
from gemma_chat.infrastructure.llm.engine import tokenizer_prefetch
from gemma_chat.infrastructure.llm.engine.calibration import (
    calibration_sequences,
    calibration_text,
    head_statistics,
    model_samples,
)
from gemma_chat.infrastructure.llm.engine.checkpoint import (
    Checkpoint,
    GGUFCheckpoint,
    open_checkpoint,
)
from gemma_chat.infrastructure.llm.engine.config import text_config_from_hf
from gemma_chat.infrastructure.llm.engine.conversion import convert_streamed, convert_weights
from gemma_chat.infrastructure.llm.engine.gemma4 import Gemma4Model
from gemma_chat.infrastructure.llm.engine.q8 import BlockBits, Q8Kernels
from gemma_chat.infrastructure.llm.engine.text_models import (
    TextModel,
    empty_quantized,
    new_model,
    takes_calibration,
    weight_sources,
)
from gemma_chat.infrastructure.llm.engine.weights import lean_weight_sources
from gemma_chat.infrastructure.llm.loading.model_source import ModelSource, source_digest
from gemma_chat.infrastructure.llm.tokenizers.hf_tokenizers import HFTokenizersTokenizer
from gemma_chat.infrastructure.llm.tokenizers.native_bpe import open_tokenizer, write_vocabulary

__all__ = [
    "FORMAT_VERSION",
    "LOCK_TIMEOUT_SECONDS",
    "ConvertedModel",
    "ConvertedModelStore",
    "WeightFormat",
]

logger = logging.getLogger(__name__)

# 2: int8 weights packed for the VNNI kernel, float16 scales; 3: the native tokenizer's file
FORMAT_VERSION = 3
# of the 4-bit formats, after FORMAT_VERSION's (``-v3.4``): 1 (none), importance-weighted
# rounding; 2, IQ4_NL's levels (branch iq4-levels); 3, the head rounded by GPTQ, lookups int8
# (Gemma 3's head only); 4, Gemma 4's head rounded by GPTQ too (its "-v3.3" entries were
# rounded per weight; Gemma 3's are the same bytes as at 3, converted again once all the same:
# the key does not know the architecture, which a GGUF's header takes long to read)
Q4_FORMAT_VERSION = 4
WEIGHTS = "weights.safetensors"
MANIFEST = "manifest.json"
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
# How long to wait for another process converting the same entry: a large model converts in
# minutes; past this, something other than a conversion holds the lock.
LOCK_TIMEOUT_SECONDS = 30 * 60


@dataclass(frozen=True)
class WeightFormat:
    """How weights are stored and computed: a float dtype, or int8 blocks (``kernels``)."""

    name: str  # float32 | bfloat16 | float16 | q8 | q4 (also the cache entry's name)
    dtype: torch.dtype  # of the stored float weights (float32 before int8 quantization)
    kernels: Q8Kernels | None = None
    bits: BlockBits = field(default_factory=BlockBits)  # of the head and blocks, with kernels
    # packed weights copied into 2 MB pages once loaded (``q8.hold_in_huge_pages``), or left in
    # the file's mapping (settings: ``performance.huge_pages``); not part of the entry's key
    huge_pages: bool = True

    @classmethod
    def floating(cls, dtype: torch.dtype) -> WeightFormat:
        return cls(_DTYPE_NAMES[dtype], dtype)

    @classmethod
    def q8(cls, kernels: Q8Kernels, *, huge_pages: bool = True) -> WeightFormat:
        return cls("q8", torch.float32, kernels, huge_pages=huge_pages)

    @classmethod
    def q4(cls, kernels: Q8Kernels, *, huge_pages: bool = True) -> WeightFormat:
        """The output head (most of the bytes) in 4-bit blocks (``q8.pack_weight4``) rounded by
        GPTQ (``gptq.py``), embedding lookups from an int8 copy, the decoder blocks in int8:
        cached under its own key beside the int8 copy. Why not the blocks too: DEVELOPMENT.md,
        "4-bit weights"."""
        bits = BlockBits(head=4, blocks=8, lookup=8)
        return cls("q4", torch.float32, kernels, bits=bits, huge_pages=huge_pages)

    @property
    def quantization(self) -> str:
        """As the settings name it: int8, int4 (a 4-bit head), or none (float weights)."""
        if self.kernels is None:
            return "none"
        return "int4" if 4 in (self.bits.head, self.bits.blocks) else "int8"


class ConvertedModel:
    def __init__(self, directory: Path, model: TextModel, tokenizer: HFTokenizersTokenizer) -> None:
        self.directory = directory
        self.model = model
        self.tokenizer = tokenizer


class ConvertedModelStore:
    def __init__(self, root: Path, *, lock_timeout: float = LOCK_TIMEOUT_SECONDS) -> None:
        self.root = Path(root) / "models"
        self.lock_timeout = lock_timeout

    def key(self, source_digest: str, weights: WeightFormat) -> str:
        version = f"{FORMAT_VERSION}"
        if weights.quantization == "int4":  # the rounding changed: older entries are not reused
            version += f".{Q4_FORMAT_VERSION}"
        return f"{source_digest[:20]}-{weights.name}-v{version}"

    def has(self, source: ModelSource, weights: WeightFormat) -> bool:
        """Whether a converted entry for this checkpoint and format is on disk (not verified)."""
        try:
            digest = source_digest(source, self.root.parent)
        except OSError:
            return False
        return digest is not None and (self.root / self.key(digest, weights)).is_dir()

    def stored_config(self, source: ModelSource, weights: WeightFormat) -> dict[str, Any] | None:
        """The text config saved with a converted entry of this checkpoint and format, if there
        is one: read instead of the checkpoint's header, whose GGUF vocabulary alone takes
        hundreds of MB to parse."""
        try:
            digest = source_digest(source, self.root.parent)
            if digest is None:
                return None
            path = self.root / self.key(digest, weights) / "config.json"
            stored: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return stored

    def load_or_convert(
        self, source: ModelSource, weights: WeightFormat, *, progress: bool = True
    ) -> ConvertedModel:
        digest = source_digest(source, self.root.parent)
        assert digest is not None
        directory = self.root / self.key(digest, weights)
        if directory.is_dir():
            try:
                return self.load(directory, weights)
            except Exception as exc:
                # Checked again under the lock: another process may be replacing it right now.
                logger.debug("The converted model in %s did not load: %s", directory, exc)
        with self._building(directory):
            if directory.is_dir():  # finished by another process while this one waited
                try:
                    return self.load(directory, weights)
                except Exception as exc:
                    logger.warning("Rebuilding the converted model in %s: %s", directory, exc)
                    shutil.rmtree(directory, ignore_errors=True)
            self.convert(source, weights, directory, progress=progress)
            give_back_freed_heap()
            return self.load(directory, weights)

    @contextmanager
    def _building(self, directory: Path) -> Iterator[None]:
        """Hold the entry's lock: one process at a time builds it (or waits, then reads it)."""
        self.root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(directory.with_name(directory.name + ".lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            logger.info("Another process is converting the model into %s; waiting", directory)
            try:
                lock.acquire(timeout=self.lock_timeout)
            except Timeout:
                raise ModelLoadError(
                    f"Waited {self.lock_timeout:g} s for another process converting the model "
                    f"into {directory} (it holds {lock.lock_file}). Stop that process, or "
                    "point GEMMA_CACHE_DIR at another directory."
                ) from None
        try:
            yield
        finally:
            lock.release()

    def load(self, directory: Path, weights: WeightFormat) -> ConvertedModel:
        # The tokenizer parses on another thread (without the GIL) while the weights load; it may
        # have started already, before torch was imported (tokenizer_prefetch).
        with ThreadPoolExecutor(max_workers=1) as pool:
            # in the kernels' own library (a forced variant: not the auto one beside it)
            variant = weights.kernels.variant if weights.kernels is not None else "auto"
            tokenizer = tokenizer_prefetch.take(directory) or pool.submit(
                open_tokenizer, directory, variant
            )
            verify(directory)
            model = self._load_model(directory, weights)
            return ConvertedModel(directory, model, tokenizer.result())

    def _load_model(self, directory: Path, weights: WeightFormat) -> TextModel:
        from safetensors.torch import load_file

        hf_config = json.loads((directory / "config.json").read_text())
        tied = bool(hf_config.get("tie_word_embeddings", True))
        with torch.device("meta"):
            model = new_model(text_config_from_hf(hf_config))
        state = load_file(directory / WEIGHTS)
        if weights.kernels is not None:
            empty_quantized(
                model, weights.kernels, tied=tied, bits=weights.bits, huge_pages=weights.huge_pages
            )
        else:
            if "lm_head.weight" not in state:
                state["lm_head.weight"] = state["embed.weight"]  # tied: one tensor, held once
            stored = {t.dtype for k, t in state.items() if not k.endswith("norm.weight")}
            if stored != {weights.dtype}:
                raise CorruptEntryError("the stored weights have another dtype")
            model.compute_dtype = weights.dtype
        model.load_state_dict(state, assign=True, strict=True)
        return model.eval()

    def convert(
        self, source: ModelSource, weights: WeightFormat, directory: Path, *, progress: bool
    ) -> None:
        from tqdm import tqdm

        source.ensure_present()
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".converting-", dir=self.root))
        steps = tqdm(
            total=3,
            desc="Converting the model once (later loads take about a second)",
            disable=not progress,
        )
        try:
            steps.set_postfix_str("tokenizer")
            checkpoint = open_checkpoint(source.directory, source.gguf_file)
            hf_tokenizer = save_tokenizer(source, checkpoint, tmp)
            write_vocabulary(tmp)  # the native tokenizer's copy, where it applies
            steps.update()
            steps.set_postfix_str("weights")
            config = dict(checkpoint.config)
            config["eos_token_id"] = end_of_generation_ids(source, config)
            config["checkpoint"] = {
                "architecture": checkpoint.architecture.name,
                "format": checkpoint.format,
                "stored": checkpoint.stored_types,
            }
            if checkpoint.architecture.unsupported:
                raise ModelLoadError(f"{source.directory}: {checkpoint.architecture.unsupported}")
            tied = bool(config.get("tie_word_embeddings", True))
            lean_config = text_config_from_hf(config)
            gptq_head = weights.kernels is not None and weights.bits.head == 4 and tied
            if takes_calibration(lean_config):
                ids, head_sequences = None, None
                if weights.kernels is not None and 4 in (weights.bits.head, weights.bits.blocks):
                    ids = hf_tokenizer(calibration_text())["input_ids"]  # the 4-bit rounding's
                    if gptq_head:
                        # the int8 model (its own entry, converted first if absent: it holds
                        # one block's float weights, or a piece of a weight, at a time, as this
                        # conversion does) let go once it has written its samples
                        head_sequences = self._head_sequences(
                            self._int8_model(source, weights, progress),
                            *_text_and_bos(hf_tokenizer, ids),
                        )
                # One tensor at a time: read (float32), cast or quantized, written, let go.
                convert_weights(
                    checkpoint,
                    lean_weight_sources(lean_config, tied=tied),
                    lean_config,
                    tmp / WEIGHTS,
                    dtype=weights.dtype,
                    kernels=weights.kernels,
                    bits=weights.bits,
                    tied=tied,
                    calibration_ids=ids,
                    head_sequences=head_sequences,
                )
                del checkpoint
            else:
                # A piece of a weight at a time, 4-bit rounding unweighted but for a tied head's
                # GPTQ, fitted on the int8 model's head inputs (Gemma 4).
                statistics = None
                if gptq_head:
                    ids = hf_tokenizer(calibration_text())["input_ids"]
                    statistics = self._head_statistics(
                        source, weights, *_text_and_bos(hf_tokenizer, ids), progress
                    )
                convert_streamed(
                    checkpoint,
                    weight_sources(lean_config, tied=tied),
                    lean_config,
                    tmp / WEIGHTS,
                    dtype=weights.dtype,
                    kernels=weights.kernels,
                    bits=weights.bits,
                    tied=tied,
                    head_statistics=statistics,
                )
                del checkpoint
            steps.update()
            steps.set_postfix_str("saving")
            (tmp / "config.json").write_text(json.dumps(config, indent=1, default=str))
            write_manifest(tmp)
            try:
                os.replace(tmp, directory)
            except OSError:
                # Written meanwhile by a process that did not take the lock (an older
                # gemma-chat): that entry is as good as this one.
                if not directory.is_dir():
                    raise
                logger.info("Using the converted model another process wrote to %s", directory)
            self._remove_other_versions(directory)
            steps.update()
        finally:
            steps.close()
            shutil.rmtree(tmp, ignore_errors=True)

    def _head_sequences(
        self, eight: TextModel, ids: list[int], bos: int
    ) -> tuple[list[list[int]], list[list[int]]]:
        """What a 4-bit head's GPTQ rounding is fitted on: the calibration text's tokens ``ids``
        (no first token) in sequences, and samples written by the int8 model ``eight``
        (``_int8_model``)."""
        return calibration_sequences(ids, bos), model_samples(eight, bos)

    def _head_statistics(
        self, source: ModelSource, weights: WeightFormat, ids: list[int], bos: int, progress: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A Gemma 4 head's GPTQ statistics (``calibration.head_statistics``): its int8 model's
        head inputs over the sequences ``_head_sequences`` takes (its float blocks are never
        run at conversion: ``conversion.convert_streamed``)."""
        eight = self._int8_model(source, weights, progress)
        assert isinstance(eight, Gemma4Model)  # the streamed conversion's (takes_calibration)
        return head_statistics(eight, *self._head_sequences(eight, ids, bos))

    def _int8_model(self, source: ModelSource, weights: WeightFormat, progress: bool) -> TextModel:
        """The int8 model of ``source`` with the kernels of ``weights`` (its own entry,
        converted first if absent)."""
        assert weights.kernels is not None
        eight = self.load_or_convert(
            source,
            WeightFormat.q8(weights.kernels, huge_pages=weights.huge_pages),
            progress=progress,
        )
        return eight.model

    def _remove_other_versions(self, directory: Path) -> None:
        """Entries of the same model and format written by other versions of gemma-chat."""
        stem = directory.name.rsplit("-v", 1)[0]
        for other in self.root.glob(f"{stem}-v*"):
            if other != directory and other.is_dir():
                shutil.rmtree(other, ignore_errors=True)


def _text_and_bos(tokenizer: Any, ids: list[int]) -> tuple[list[int], int]:
    """The calibration text's tokens ``ids`` without their first token if it is the beginning
    of text, and that token's id."""
    bos = tokenizer.bos_token_id
    bos = int(bos if bos is not None else ids[0])
    return (ids[1:] if ids and ids[0] == bos else ids), bos


def save_tokenizer(source: ModelSource, checkpoint: Checkpoint, target: Path) -> Any:
    """The checkpoint's tokenizer as ``tokenizer.json`` + ``tokenizer_config.json``, with its
    chat template (a GGUF's ``tokenizer.chat_template``, or the directory's own); returned,
    for the 4-bit rounding's calibration text."""
    from transformers import AutoTokenizer
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES

    kwargs: dict[str, Any] = {"local_files_only": True}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
        # Without a tokenizer type, AutoTokenizer reads a Gemma GGUF's whole header with gguf's
        # GGUFReader (an object per vocabulary item) only to find the class its model type
        # names. Named here, unless a tokenizer_config.json beside the file names a class (it
        # decides then); Gemma 4 has no entry and is read as before.
        model_type = checkpoint.architecture.text_model_type
        if TOKENIZER_MAPPING_NAMES.get(model_type) and not _names_tokenizer_class(source):
            kwargs["tokenizer_type"] = model_type
    tokenizer = AutoTokenizer.from_pretrained(source.directory, **kwargs)
    if not getattr(tokenizer, "chat_template", None) and isinstance(checkpoint, GGUFCheckpoint):
        tokenizer.chat_template = checkpoint.chat_template
    tokenizer.save_pretrained(target)
    return tokenizer


def _names_tokenizer_class(source: ModelSource) -> bool:
    """Whether a tokenizer_config.json beside the checkpoint names its tokenizer's class (or
    cannot be read, which AutoTokenizer then says)."""
    path = source.directory / "tokenizer_config.json"
    if not path.is_file():
        return False
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return True
    return not isinstance(config, dict) or "tokenizer_class" in config or "auto_map" in config


def end_of_generation_ids(source: ModelSource, config: dict[str, Any]) -> list[int]:
    """Token ids that end an answer: the config's and generation_config.json's
    ``eos_token_id`` (an instruction-tuned Gemma lists its end-of-turn token there)."""
    ids: list[int] = []
    generation = source.directory / "generation_config.json"
    found: list[Any] = [config.get("eos_token_id")]
    if not source.gguf_file and generation.is_file():
        found.append(json.loads(generation.read_text()).get("eos_token_id"))
    for value in found:
        for i in value if isinstance(value, list) else [] if value is None else [value]:
            if int(i) not in ids:
                ids.append(int(i))
    return ids


def write_manifest(directory: Path) -> None:
    files = {
        path.name: {"size": path.stat().st_size, "crc32": _crc32(path)}
        for path in sorted(directory.iterdir())
        if path.is_file() and path.name != MANIFEST
    }
    (directory / MANIFEST).write_text(
        json.dumps({"format": FORMAT_VERSION, "files": files}, indent=1)
    )


def verify(directory: Path) -> None:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError) as exc:
        raise CorruptEntryError(f"no readable manifest: {exc}") from exc
    if manifest.get("format") != FORMAT_VERSION or WEIGHTS not in files:
        raise CorruptEntryError("written by another version")
    for name, expected in files.items():
        path = directory / name
        if not path.is_file() or path.stat().st_size != expected["size"]:
            raise CorruptEntryError(f"{name} is missing or has the wrong size")
        if _crc32(path) != expected["crc32"]:
            raise CorruptEntryError(f"{name} does not match its checksum")


def _crc32(path: Path) -> int:
    crc = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return crc
