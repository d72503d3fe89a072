"""Start parsing a cached tokenizer before torch is even imported.

Reading the embedded model's native tokenizer (``tokenizers/native_bpe.py``) runs in C without
the GIL, and importing torch takes longer: started first, on another thread, the two overlap.
Nothing here imports torch.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from gemma_chat.infrastructure.llm.loading.model_source import resolve_model_source, source_digest
from gemma_chat.infrastructure.llm.tokenizers.hf_tokenizers import HFTokenizersTokenizer
from gemma_chat.infrastructure.llm.tokenizers.native_bpe import open_tokenizer
from gemma_chat.shared.config import Settings

__all__ = ["start", "take"]

logger = logging.getLogger(__name__)

_pending: dict[str, Future[HFTokenizersTokenizer]] = {}
_workers = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gemma-tokenizer")


def _key(directory: Path) -> str:
    # Every converted copy of one checkpoint holds the same tokenizer: key by its digest part.
    return f"{directory.parent}/{directory.name.split('-')[0]}"


def start(settings: Settings) -> None:
    """Parse the tokenizer of the converted model the settings name, if one is cached."""
    try:
        source = resolve_model_source(settings.model.name, settings.model.revision)
        # Never hashes a new checkpoint here: this runs on the caller's (event loop's) thread.
        digest = source_digest(source, Path(settings.cache_dir), compute=False)
    except Exception:  # anything unusual is for the real load to report
        return
    if digest is None:
        return
    models = Path(settings.cache_dir) / "models"
    # Entries with the native tokenizer's file first: it is what their loads use.
    candidates = [
        *sorted(models.glob(f"{digest[:20]}-*/tokenizer.bpe")),
        *sorted(models.glob(f"{digest[:20]}-*/tokenizer.json")),
    ]
    for tokenizer in candidates:
        key = _key(tokenizer.parent)
        if key not in _pending:
            variant = settings.performance.kernel_variant  # the library the model loads
            _pending[key] = _workers.submit(open_tokenizer, tokenizer.parent, variant)
        return


def take(directory: Path) -> Future[HFTokenizersTokenizer] | None:
    """The prefetched tokenizer for this converted model, if one was started."""
    return _pending.pop(_key(directory), None)
