"""Freed heap memory given back to the system.

glibc keeps blocks freed below its mmap threshold (a threshold it raises, up to 32 MB, as large
blocks are freed) for later allocations; a process that has freed many of them (a conversion, a
parsed tokenizer, an idle engine's KV cache) holds them for as long as it runs, and a loop whose
freed blocks do not fit its next requests grows instead of reusing them. ``malloc_trim`` gives
them back. Elsewhere (musl, macOS) the allocator decides, and this does nothing.
"""

from __future__ import annotations

import ctypes

__all__ = ["give_back_freed_heap"]


def give_back_freed_heap() -> None:
    """Return the heap memory this process has freed to the system (glibc's ``malloc_trim``;
    a no-op without it)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):
        return
    trim(0)
