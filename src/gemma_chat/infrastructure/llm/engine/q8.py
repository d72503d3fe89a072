"""int8 weights and activations in blocks of 32 (llama.cpp's Q8_0), computed by our C kernels.

On this class of CPU, torch's int8 paths are slower than bfloat16 (see the measurements in
DEVELOPMENT.md), so the kernels are ours: ``kernels/*.c`` behind ``kernels/q8.h``, compiled with
the system's C compiler into variants, of which the best one this CPU runs is loaded (native.py),
bound with cffi from the header itself. Weights are packed for AVX-512 VNNI (AVX2
reads the same layout, with the same int8 products); every output is reduced in a fixed order, so
results do not depend on the batch size, and each decoder block runs in one C call
(``Q8BlockDecoder``). ``Q4Linear``: the same with 4-bit weights (``kernels/matmul4.c``), which
``quantization=int4`` gives the output head (``BlockBits``). Perplexity against float32 is
measured by benchmarks/engine_benchmark.py (figures in DEVELOPMENT.md).
"""

from __future__ import annotations

import ctypes
import logging
import math
import mmap
import re
import sys
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from itertools import accumulate
from pathlib import Path
from typing import Any

import cffi
import torch
from torch import nn

from gemma_chat.domain.errors import OutOfMemoryError
from gemma_chat.infrastructure.llm.engine.kv_cache import KVCache
from gemma_chat.infrastructure.llm.engine.model import Block, Gemma3Model
from gemma_chat.infrastructure.llm.engine.native import KERNELS, choose_variant, resolve_library

__all__ = [
    "BLOCK",
    "BlockBits",
    "Q4Linear",
    "Q8BlockDecoder",
    "Q8Embedding",
    "Q8Kernels",
    "Q8Linear",
    "declarations",
    "empty_q8_model",
    "hold_in_huge_pages",
    "hold_in_huge_pages_once_loaded",
    "load_kernels",
    "pack_weight",
    "pack_weight4",
    "quantize_model",
    "quantize_packed",
    "quantize_weight",
    "quantize_weight4",
]

logger = logging.getLogger(__name__)

BLOCK = 32
LANES = 16  # output rows packed side by side (kernels/matmul.c)
HEADER = KERNELS / "q8.h"

_LINEARS = ("qkv", "o", "gate_up", "down")
_NORMS = (
    "input_norm",
    "q_norm",
    "k_norm",
    "post_attention_norm",
    "pre_feedforward_norm",
    "post_feedforward_norm",
)


def declarations(header: str) -> str:
    """The C declarations cffi binds: the header's section between ``cffi:begin`` and
    ``cffi:end``, with every function's pointer parameters taken as addresses (``uintptr_t``).
    Tensors are passed as ``data_ptr()`` integers, which cffi takes as they are instead of
    through an ``ffi.cast`` per argument; both are passed alike on 64-bit targets."""
    section = header.split("/* cffi:begin */")[1].split("/* cffi:end */")[0]
    section = re.sub(r"/\*.*?\*/", "", section, flags=re.S)

    def by_address(function: re.Match[str]) -> str:
        parameters = [
            "uintptr_t " + re.split(r"[\s*]+", p.strip())[-1] if "*" in p else p.strip()
            for p in function.group(2).split(",")
        ]
        return f"{function.group(1)}({', '.join(parameters)});"

    return re.sub(r"(\w+)\s*\(([^()]*)\)\s*;", by_address, section)


@cache
def _ffi() -> Any:
    ffi = cffi.FFI()
    ffi.cdef(declarations(HEADER.read_text()))
    return ffi


# A head product finds its rows' argmax only for a decode step's few rows: a prefill's or a
# whole sequence's logits are not searched by greedy selection row by row.
_ARGMAX_ROWS = 64


@dataclass(frozen=True)
class _HeadArgmax:
    """Each row's argmax of a head product's logits ``best`` [M], found by its threads; it
    holds for a tensor of the same memory and shape that nothing wrote since (torch's version
    counter, shared by views; the kernels' own in-place writes clear it). The storage is held
    so that its memory cannot be another tensor's meanwhile."""

    storage: torch.UntypedStorage
    version: int
    shape: torch.Size
    best: torch.Tensor

    def of(self, logits: torch.Tensor) -> bool:
        return (
            logits.dtype == torch.float32
            and logits.shape == self.shape
            and logits.is_contiguous()
            and logits.data_ptr() == self.storage.data_ptr()
            and logits._version == self.version
        )


class Q8Kernels:
    """The library's functions (``kernels/q8.h``), called through cffi; ``variant`` names the
    build (``native.VARIANTS``)."""

    def __init__(self, library: Path, variant: str) -> None:
        self.ffi, self.path, self.variant = _ffi(), library, variant
        self._lib = self.ffi.dlopen(str(library))
        # As many threads as torch uses (OMP_NUM_THREADS, torch.set_num_threads).
        self._lib.gemma_set_threads(torch.get_num_threads())
        self.vectorized = bool(self._lib.q8_vector_kernels())  # VNNI, AVX2, NEON sdot or i8mm
        # The argmax of the last output head's logits, found with the product (``matmul``).
        self._head_argmax: _HeadArgmax | None = None

    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` [M, K] float32 -> int8 values [M, K] and float32 scales [M, K/32]."""
        x = x.contiguous()
        m, k = x.shape
        q = torch.empty((m, k), dtype=torch.int8)
        s = torch.empty((m, k // BLOCK), dtype=torch.float32)
        self._lib.q8_quantize_rows(x.data_ptr(), q.data_ptr(), s.data_ptr(), m, k)
        return q, s

    def matmul(self, xq: torch.Tensor, xs: torch.Tensor, w: Q8Linear) -> torch.Tensor:
        """[M, K] x [N, K]^T -> [M, N] float32 (int8 or 4-bit weights, as ``w.bits`` says);
        ``OutOfMemoryError`` when the product's buffers could not be allocated."""
        m, k = xq.shape
        weight = (w.q.data_ptr(), w.scale.data_ptr(), w.mult)
        if w.finds_argmax:
            self._head_argmax = None  # let go of the last head's logits before the next ones
        if w.finds_argmax and m <= _ARGMAX_ROWS:
            # An output head: each row's argmax found as the threads write its logits, for
            # ``argmax`` of these logits (greedy rows), which then needs no second pass over
            # them (8 MB at 8 rows, read back from memory). Not an inference tensor, even in
            # inference mode: those have no version counter to tell a later write.
            with torch.inference_mode(False):
                y = torch.empty((m, w.out_features), dtype=torch.float32)
            best = torch.empty(m, dtype=torch.int64)
            product = self._lib.q4p_matmul_argmax if w.bits == 4 else self._lib.q8p_matmul_argmax
            done = product(
                xq.data_ptr(),
                xs.data_ptr(),
                *weight,
                y.data_ptr(),
                m,
                w.out_features,
                k,
                best.data_ptr(),
            )
            if done:
                self._head_argmax = _HeadArgmax(y.untyped_storage(), y._version, y.shape, best)
        else:
            y = torch.empty((m, w.out_features), dtype=torch.float32)
            product = self._lib.q4p_matmul if w.bits == 4 else self._lib.q8p_matmul
            done = product(
                xq.data_ptr(), xs.data_ptr(), *weight, y.data_ptr(), m, w.out_features, k
            )
        if not done:
            raise OutOfMemoryError(
                f"the buffers of a product of {m} rows by {w.out_features} outputs could not be"
                " allocated"
            )
        return y

    def quantize_weight4(
        self, w: torch.Tensor, importance: torch.Tensor | None, q: torch.Tensor, s: torch.Tensor
    ) -> None:
        """``q8.quantize_weight4``'s work, into ``q`` and ``s``."""
        self._lib.q4_quantize_weight(
            w.data_ptr(),
            0 if importance is None else importance.data_ptr(),
            q.data_ptr(),
            s.data_ptr(),
            w.shape[0],
            w.shape[1],
        )

    def argmax(self, logits: torch.Tensor) -> list[int]:
        """Each row's first largest value's index, as ``torch.argmax``: [R, N] -> R ints (-1 for
        a row with a NaN or an infinite top: a broken model's output)."""
        known, self._head_argmax = self._head_argmax, None
        if known is not None and known.of(logits):
            return [int(i) for i in known.best.tolist()]
        x = logits.float().contiguous()
        out = torch.empty(x.shape[0], dtype=torch.int64)
        self._lib.q8_argmax_rows(x.data_ptr(), x.shape[0], x.shape[1], out.data_ptr())
        return [int(i) for i in out.tolist()]

    def soft_cap_(self, logits: torch.Tensor, cap: float) -> None:
        """``logits = tanh(logits / cap) * cap`` in place, on the kernels' threads (torch's
        elementwise operations over a batch's logits would start its OpenMP threads, which then
        spin on the cores these kernels need); ``torch``'s in-place operations for a tensor
        that is not contiguous float32."""
        self._head_argmax = None
        if logits.dtype != torch.float32 or not logits.is_contiguous():
            logits.div_(cap).tanh_().mul_(cap)
            return
        rows = logits.shape[0] if logits.dim() > 1 else 1
        self._lib.q8_soft_cap_rows(logits.data_ptr(), rows, logits.numel() // max(rows, 1), cap)
        # a write torch did not see: its version counter must still tell whoever kept a result
        torch.autograd.graph.increment_version(logits)

    def top_k(self, logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's ``k`` largest values, largest first, and their indices (as
        ``torch.topk``): [R, N] -> values [R, k], ids [R, k]."""
        x = logits.float().contiguous()
        if not 0 < k <= x.shape[1]:
            raise ValueError(f"top_k needs 0 < k <= {x.shape[1]}, got {k}")
        values = torch.empty((x.shape[0], k), dtype=torch.float32)
        ids = torch.empty((x.shape[0], k), dtype=torch.int64)
        self._lib.q8_top_k_rows(
            x.data_ptr(), x.shape[0], x.shape[1], k, values.data_ptr(), ids.data_ptr()
        )
        return values, ids

    def rows(self, w: Q8Linear, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` of ``w`` as float32: [R] -> [R, K]."""
        ids = ids.to(torch.int64).contiguous()
        out = torch.empty((ids.numel(), w.in_features), dtype=torch.float32)
        lookup = self._lib.q4p_rows if w.bits == 4 else self._lib.q8p_rows
        lookup(
            w.q.data_ptr(),
            w.scale.data_ptr(),
            w.mult,
            ids.data_ptr(),
            ids.numel(),
            w.in_features,
            out.data_ptr(),
        )
        return out

    def block(
        self,
        block: int,  # the address of a gemma_block (Q8BlockDecoder)
        x: torch.Tensor,  # [R, E] float32 rows (tokens), updated in place
        slots: torch.Tensor,  # [R] int64
        positions: torch.Tensor,  # [R] int64
        rope: tuple[torch.Tensor, torch.Tensor],  # cos, sin: [P, D] float32
        cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor],  # this layer's table (KVCache)
    ) -> None:
        """One block on rows of tokens. ``cache``: per slot, the address of this layer's keys and
        of its values, and their capacity ([slots] int64 each; ``KVCache.k_addresses``...).
        ``OutOfMemoryError`` when the block's buffers could not be allocated (``x`` is then as
        it was)."""
        keys, values, capacities = cache
        done = self._lib.gemma_decode_block(
            block,
            x.data_ptr(),
            x.shape[0],
            slots.data_ptr(),
            positions.data_ptr(),
            rope[0].data_ptr(),
            rope[1].data_ptr(),
            keys.data_ptr(),
            values.data_ptr(),
            capacities.data_ptr(),
        )
        if not done:
            raise OutOfMemoryError(
                f"the decoder block's buffers for {x.shape[0]} rows could not be allocated"
            )


def load_kernels(cache_dir: Path, *, variant: str = "auto") -> Q8Kernels | None:
    """The compiled kernels (``native.resolve_library``): the best variant this CPU runs whose
    build works, or the one named (a ``ConfigurationError`` if this CPU cannot run it); None when
    no C compiler can build them."""
    if variant != "auto":
        choose_variant(variant)  # refused before anything is built
    found = resolve_library(cache_dir, variant=variant)
    if found is None:
        return None
    chosen, library = found
    try:
        return Q8Kernels(library, chosen)
    except OSError as exc:  # not a library any more (changed under us): built again next time
        logger.warning("Could not load the native kernels (%s); rebuilding next time", exc)
        library.unlink(missing_ok=True)
        return None


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float -> int8 [N, K] and float32 scales [N, K/32], rounding to nearest."""
    w = weight.float().reshape(weight.shape[0], -1, BLOCK)  # [N, K/32, 32]
    scale = _block_scales(w)  # [N, K/32]
    inverse = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    q = torch.round(w * inverse.unsqueeze(-1)).clamp(-127, 127).to(torch.int8)
    return q.reshape(weight.shape), scale.contiguous()


def _block_scales(w: torch.Tensor) -> torch.Tensor:
    """[N, K/32, 32] -> each block's scale, its largest magnitude as 127: [N, K/32]."""
    return w.abs().amax(dim=-1) / 127.0


def pack_weight(
    q: torch.Tensor, scale: torch.Tensor, *, mult: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """int8 [N, K] and scales [N, K/32] -> the kernel's layout (``kernels/matmul.c``): bytes
    q + 128 as [N/16, K/32, 8, 16, 4], float16 scales as [N/16, K/32, 16], and the factor [1]
    the scales were divided by to sit well inside float16's range (``mult``: that of the
    whole matrix, when these are some of its rows)."""
    n, k = q.shape
    pad = -n % LANES
    q = torch.cat([q, q.new_zeros((pad, k))]) if pad else q
    scale = torch.cat([scale, scale.new_zeros((pad, k // BLOCK))]) if pad else scale
    tiles, blocks = q.shape[0] // LANES, k // BLOCK
    packed = (q.to(torch.int16) + 128).to(torch.uint8)
    packed = packed.view(tiles, LANES, blocks, 8, 4).permute(0, 2, 3, 1, 4).contiguous()
    halves, factor = _float16_scales(scale, tiles, blocks, mult)
    return packed, halves, factor


def quantize_weight4(
    kernels: Q8Kernels, weight: torch.Tensor, importance: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float -> int8 [N, K] in -8..7 and float32 scales [N, K/32]: per block of 32, of
    a few scales near GGUF Q4_0's (the largest magnitude as -8 or as 7), the one whose values,
    rounded and then given their least-squares scale, leave the smallest squared error, each
    column's error weighed by ``importance`` [K] (the mean square of that input feature, as
    llama.cpp's importance matrix) where given (``q4_quantize_weight`` in C: seconds for the
    embedded model's head, where torch took minutes)."""
    w = weight.detach().float().contiguous()
    n, k = w.shape
    q = torch.empty((n, k), dtype=torch.int8)
    scales = torch.empty((n, k // BLOCK), dtype=torch.float32)
    weights = None if importance is None else importance.float().clamp_min(1e-12).contiguous()
    kernels.quantize_weight4(w, weights, q, scales)
    return q, scales


def pack_weight4(
    q: torch.Tensor, scale: torch.Tensor, *, mult: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """4-bit values [N, K] (int8, -8..7) and scales [N, K/32] -> the 4-bit kernel's layout
    (``kernels/matmul4.c``): bytes [N/16, K/32, 4, 16, 4], each the values of k = 4g + j (low
    nibble) and 16 + 4g + j (high nibble) plus 8; float16 scales and their factor as
    ``pack_weight``'s."""
    n, k = q.shape
    pad = -n % LANES
    q = torch.cat([q, q.new_zeros((pad, k))]) if pad else q
    scale = torch.cat([scale, scale.new_zeros((pad, k // BLOCK))]) if pad else scale
    tiles, blocks = q.shape[0] // LANES, k // BLOCK
    nibbles = (q.to(torch.int16) + 8).to(torch.uint8)  # [N, K]
    nibbles = nibbles.view(tiles, LANES, blocks, 2, 4, 4)  # [t, lane, b, half, g, j]
    packed = nibbles[:, :, :, 0] | (nibbles[:, :, :, 1] << 4)  # [t, lane, b, g, j]
    packed = packed.permute(0, 2, 3, 1, 4).contiguous()  # [t, b, g, lane, j]
    halves, factor = _float16_scales(scale, tiles, blocks, mult)
    return packed, halves, factor


def _scale_factor(scale: torch.Tensor) -> float:
    """The power of two scales [N, K/32] are divided by to sit well inside float16's range."""
    largest = float(scale.abs().max()) if scale.numel() else 0.0
    exponent = math.floor(math.log2(2.0**14 / largest)) if largest > 0 else 0
    return 2.0**-exponent


def _float16_scales(
    scale: torch.Tensor, tiles: int, blocks: int, mult: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scales [N, K/32] -> float16 [N/16, K/32, 16] divided by a power of two that keeps them
    well inside float16's range (``mult``, else ``_scale_factor``'s), and that factor [1]."""
    mult = _scale_factor(scale) if mult is None else mult
    halves = (scale / mult).to(torch.float16)
    halves = halves.view(tiles, LANES, blocks).permute(0, 2, 1).contiguous()
    return halves, torch.tensor([mult], dtype=torch.float32)


# Weights quantized and packed at a time by ``quantize_packed`` (whole tiles of rows): its
# temporaries are those of this many weights, not of the whole matrix.
_WEIGHTS_AT_A_TIME = 1 << 24


def quantize_packed(
    weight: torch.Tensor,
    bits: int,
    kernels: Q8Kernels | None = None,
    importance: torch.Tensor | None = None,
    *,
    rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A float weight [N, K] in the kernels' layout, the same bytes as
    ``pack_weight(*quantize_weight(w))`` (``bits`` 8) or ``pack_weight4(*quantize_weight4(...))``
    (4, which needs ``kernels``), packed ``rows`` rows at a time: beside the weight and the
    result, its int8 values [N, K] and a few rows' temporaries are held, not torch's
    temporaries of the whole matrix."""
    w = weight.detach()
    n, k = w.shape
    if rows is None:
        rows = max(LANES, _WEIGHTS_AT_A_TIME // max(k, 1) // LANES * LANES)
    if rows % LANES:
        raise ValueError(f"rows must be a multiple of {LANES}, got {rows}")
    tiles, blocks = -(-n // LANES), k // BLOCK
    groups = 8 if bits == 8 else 4
    packed = torch.empty((tiles, blocks, groups, LANES, 4), dtype=torch.uint8)
    halves = torch.empty((tiles, blocks, LANES), dtype=torch.float16)
    if bits == 8:  # rounded a few rows at a time (torch's temporaries are of those rows)
        q = torch.empty((n, k), dtype=torch.int8)
        scale = torch.empty((n, blocks), dtype=torch.float32)
        for s in range(0, n, rows):
            q[s : s + rows], scale[s : s + rows] = quantize_weight(w[s : s + rows])
    elif kernels is None:
        raise ValueError("4-bit weights are rounded by the kernels: give them")
    else:  # in C, without temporaries
        q, scale = quantize_weight4(kernels, w, importance)
    mult = _scale_factor(scale)  # the whole matrix's
    pack = pack_weight if bits == 8 else pack_weight4
    for s in range(0, n, rows):
        part = pack(q[s : s + rows], scale[s : s + rows], mult=mult)
        packed[s // LANES : s // LANES + part[0].shape[0]] = part[0]
        halves[s // LANES : s // LANES + part[1].shape[0]] = part[1]
    return packed, halves, torch.tensor([mult], dtype=torch.float32)


class Q8Linear(nn.Module):
    """``y = x W^T`` with W in int8 blocks; activations are quantized per row as they come."""

    bits = 8
    # a table only looked up a few rows a step (never a product): it stays in the weights
    # file's pages, where only the rows read are resident (``hold_in_huge_pages`` skips it)
    looked_up_only = False
    # an output head whose logits greedy selection searches as they are (no soft cap after):
    # ``Q8Kernels.matmul`` finds each row's argmax with the product (``Q8Kernels.argmax``)
    finds_argmax = False
    q: torch.Tensor
    scale: torch.Tensor
    scale_factor: torch.Tensor

    def __init__(
        self,
        kernels: Q8Kernels,
        packed: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        out_features: int,
    ) -> None:
        super().__init__()
        self.kernels = kernels
        q, scale, factor = packed
        self.register_buffer("q", q)  # [N/16, K/32, 8, 16, 4] uint8 (4-bit: [.., 4, 16, 4])
        self.register_buffer("scale", scale)  # [N/16, K/32, 16] float16
        self.register_buffer("scale_factor", factor)  # [1] float32
        self.out_features = out_features
        self.in_features = int(q.shape[1]) * BLOCK
        self._mult: float | None = None
        forget = Q8Linear._forget_mult
        self.register_load_state_dict_post_hook(forget)  # type: ignore[no-untyped-call]

    def _forget_mult(self, _: object) -> None:
        self._mult = None  # the loaded scale_factor's is read at the next use

    @classmethod
    def from_weight(cls, kernels: Q8Kernels, weight: torch.Tensor) -> Q8Linear:
        """Quantize a float weight [N, K]."""
        return cls(kernels, pack_weight(*quantize_weight(weight.detach())), int(weight.shape[0]))

    @property
    def mult(self) -> float:
        if self._mult is None:  # read once: the buffer is assigned after construction
            self._mult = float(self.scale_factor)
        return self._mult

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1]).float()  # [M, K]
        xq, xs = self.kernels.quantize(rows)
        y = self.kernels.matmul(xq, xs, self)  # [M, N]
        return y.view(*shape[:-1], self.out_features)


class Q4Linear(Q8Linear):
    """``y = x W^T`` with W in 4-bit blocks (``pack_weight4``); activations as ``Q8Linear``."""

    bits = 4

    @classmethod
    def from_weight(
        cls, kernels: Q8Kernels, weight: torch.Tensor, importance: torch.Tensor | None = None
    ) -> Q8Linear:
        """Quantize a float weight [N, K] to 4 bits (``quantize_weight4``)."""
        values = quantize_weight4(kernels, weight, importance)
        return cls(kernels, pack_weight4(*values), int(weight.shape[0]))


_MADV_PAGEOUT = 21  # Linux 5.4: reclaim these pages now (clean file pages: dropped)
_HUGE_PAGE = 2 << 20  # x86-64's transparent huge page (and ARM64's with 4 KB pages)
# copied a piece at a time, each piece's file pages given back before the next: the process
# holds at most one piece twice
_COPY_PIECE = 8 << 20
_THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _huge_pages_unavailable() -> str | None:
    """Why this machine would back an madvise(MADV_HUGEPAGE) area with 4 KB pages, or None."""
    if sys.platform != "linux":
        return "not Linux"
    try:
        mode = _THP_MODE.read_text()
    except OSError:
        return "a kernel without transparent huge pages"
    return "transparent huge pages are off ([never])" if "[never]" in mode else None


def hold_in_huge_pages(linears: list[Q8Linear]) -> None:
    """Move the packed weights (bytes and scales) of ``linears`` into one anonymous area that the
    kernel backs with 2 MB pages (``madvise(MADV_HUGEPAGE)``: Linux's transparent huge pages in
    mode "madvise" or "always"), and give back the pages they were read from (the weights file's
    mapping). A decode step reads every weight once: in 4 KB pages that is a TLB miss every 4 KB,
    which kept eight rows' products waiting (measured: DEVELOPMENT.md). The bytes are the same;
    only where they are changes. Elsewhere than Linux, the weights stay where they are."""
    moving = [(linear, name) for linear in linears for name in ("q", "scale")]
    tensors: list[torch.Tensor] = [getattr(linear, name) for linear, name in moving]
    if not tensors or any(t.device.type != "cpu" for t in tensors):
        return
    why_not = _huge_pages_unavailable()
    if why_not is not None:  # a copy in 4 KB pages would gain nothing and cost the file's sharing
        logger.info("the weights stay where they were loaded: %s", why_not)
        return
    ends = list(accumulate(-(-t.nbytes // 64) * 64 for t in tensors))  # 64-byte aligned each
    try:
        # private (a shared one is shmem, with a huge page setting of its own), from a 2 MB
        # boundary
        area = mmap.mmap(-1, ends[-1] + _HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        area.madvise(mmap.MADV_HUGEPAGE)
    except OSError as exc:  # no room for the area (strict overcommit, a limit), or no THP
        logger.info("the weights stay where they were loaded: %s", exc)
        return
    to_boundary = -ctypes.addressof(ctypes.c_char.from_buffer(area)) % _HUGE_PAGE
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page = mmap.PAGESIZE
    warned = False
    for (linear, name), tensor, end in zip(moving, tensors, ends, strict=True):
        start = to_boundary + end - -(-tensor.nbytes // 64) * 64
        held = torch.frombuffer(area, dtype=torch.uint8, count=tensor.nbytes, offset=start)
        source = tensor.contiguous().view(-1).view(torch.uint8)
        # in pieces, each piece's file pages given back once copied: the process never holds
        # a weight twice (else its peak RSS grew by all the weights)
        released = -(-source.data_ptr() // page) * page
        for first in range(0, tensor.nbytes, _COPY_PIECE):
            piece = slice(first, first + _COPY_PIECE)
            held[piece].copy_(source[piece])
            until = (source.data_ptr() + min(first + _COPY_PIECE, tensor.nbytes)) // page * page
            if until > released:  # advice: a page read again comes back as it was
                if libc.madvise(released, until - released, _MADV_PAGEOUT) != 0 and not warned:
                    warned = True  # before Linux 5.4: the file's pages stay until reclaimed
                    logger.info(
                        "madvise(MADV_PAGEOUT) failed (errno %d): the weights file's pages are "
                        "held until the kernel reclaims them",
                        ctypes.get_errno(),
                    )
                released = until
        setattr(linear, name, held.view(tensor.dtype).view(tensor.shape))  # keeps area alive


def hold_in_huge_pages_once_loaded(model: nn.Module) -> None:
    """``hold_in_huge_pages`` for every packed weight of ``model`` after each
    ``load_state_dict`` (with assign=True, its buffers are then the loaded file's tensors)."""

    def hold(module: nn.Module, _: object) -> None:
        linears = {
            id(m): m for m in module.modules() if isinstance(m, Q8Linear) and not m.looked_up_only
        }
        hold_in_huge_pages(list(linears.values()))

    model.register_load_state_dict_post_hook(hold)  # type: ignore[no-untyped-call]


class Q8Embedding(nn.Module):
    """Looks rows up in the int8 table that also serves as the (tied) output projection, or in
    a table of its own."""

    def __init__(self, table: Q8Linear, *, own: bool = False) -> None:
        super().__init__()
        self._table = [table]  # not a submodule: the table is saved once, as lm_head
        if own:  # a table of its own (``BlockBits.lookup``), saved with it
            table.looked_up_only = True
            self.table = table

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        table = self._table[0]
        rows = table.kernels.rows(table, ids.reshape(-1))  # [R, K]
        return rows.view(*ids.shape, table.in_features)


class Q8BlockDecoder:
    """Every block in one C call (``gemma_decode_block``) instead of ~40 torch operations: at one
    token per sequence those small operations, not the matrix products, were most of a decode
    step (measured: DEVELOPMENT.md). Prefill goes the same way, so a token's keys and
    values are the same bits whether its prompt was prefilled whole, in pieces, or decoded."""

    def __init__(self, kernels: Q8Kernels, blocks: nn.ModuleList) -> None:
        self.kernels = kernels
        self._blocks = blocks
        self._args: list[int] = []  # each block's gemma_block, by address
        self._alive: list[Any] = []  # the structs, and the tensors they point into
        # the structs hold the weights' addresses, the norms' scales and the int8 factors as
        # they were at the first call: a load_state_dict into the blocks builds them again.
        # The hook holds the decoder weakly: a bound method would make a cycle (blocks -> hook
        # -> decoder -> blocks) that keeps a dropped model's weights until a gc pass
        decoder = weakref.ref(self)

        def forget(_blocks: nn.Module, _keys: object) -> None:
            alive = decoder()
            if alive is not None:
                alive._forget()

        blocks.register_load_state_dict_post_hook(forget)  # type: ignore[no-untyped-call]

    def _forget(self, *_: object) -> None:
        self._args, self._alive = [], []

    def _build(self) -> None:
        ffi = self.kernels.ffi
        for block in self._blocks:
            assert isinstance(block, Block)
            norms = {}
            for name in _NORMS:
                scale = (1.0 + getattr(block, name).weight.float()).contiguous()
                norms[name] = self._pointer(scale)
            config = block.config
            args = ffi.new(
                "gemma_block *",
                {
                    **{name: self._weight(getattr(block, name)) for name in _LINEARS},
                    **norms,
                    "hidden": config.hidden_size,
                    "heads": block.heads,
                    "kv_heads": block.kv_heads,
                    "head_dim": block.head_dim,
                    "intermediate": config.intermediate_size,
                    "window": config.sliding_window if block.sliding else 0,
                    "eps": config.rms_norm_eps,
                    "scaling": block.scaling,
                },
            )
            self._alive.append(args)
            self._args.append(int(ffi.cast("uintptr_t", args)))

    def _pointer(self, tensor: torch.Tensor) -> Any:
        self._alive.append(tensor)
        return self.kernels.ffi.cast("void *", tensor.data_ptr())

    def _weight(self, linear: nn.Module) -> dict[str, Any]:
        assert isinstance(linear, Q8Linear)
        return {
            "q": self._pointer(linear.q),
            "s": self._pointer(linear.scale),
            "mult": linear.mult,
            "n": linear.out_features,
            "k": linear.in_features,
            "bits": linear.bits,
        }

    def rows(
        self,
        model: Gemma3Model,
        x: torch.Tensor,  # [R, E]: one row per token, of any sequences
        positions: torch.Tensor,  # [R]
        slots: torch.Tensor,  # [R]
        cache: KVCache,
    ) -> torch.Tensor:
        """Every block on rows of tokens: x [R, E] -> [R, E].

        Each row has its slot and position: the rows' keys and values are written to the cache
        first, then each row attends to its sequence's positions up to its own (the cache holds
        room for all of them: ``KVCache.ensure``, at most ``chunk`` rows of a slot). Prefill and
        decode are the same computation, so a token's keys and values are the same bits whether
        it was prefilled whole, in pieces, decoded, or beside other sequences' tokens."""
        if cache.dtype != torch.float16:
            raise ValueError(f"the fused blocks need a float16 KV cache, not {cache.dtype}")
        if not self._args:
            self._build()
        rows = x.float().contiguous()  # updated in place, block by block
        at = positions.to(torch.int64).contiguous()
        row_slots = slots.to(torch.int64).contiguous()
        length = int(at.max()) + 1
        ropes = {
            local: model.rope_tables(local, length) for local in set(model.config.sliding_layers)
        }
        for layer, (block, args) in enumerate(zip(self._blocks, self._args, strict=True)):
            assert isinstance(block, Block)
            rope = ropes[block.sliding]
            table = (cache.k_addresses[layer], cache.v_addresses[layer], cache.capacities[layer])
            self.kernels.block(args, rows, row_slots, at, rope, table)
        return rows


@dataclass(frozen=True)
class BlockBits:
    """The bits of each kind of projection: the (tied) embedding / output head, and the
    decoder blocks' projections; each 8 (int8) or 4. ``lookup``: 0, a tied embedding looks its
    rows up in the head's table; 8, in an int8 copy of its own (the head's GPTQ rounding,
    ``gptq.py``, fits the head's products and leaves single rows further from the float ones:
    a lookup reads a few rows a step, so the copy costs memory, not bytes per step)."""

    head: int = 8
    blocks: int = 8
    lookup: int = 0


def quantize_model(
    model: Gemma3Model,
    kernels: Q8Kernels,
    *,
    tied: bool,
    bits: BlockBits = BlockBits(),
    importance: Mapping[str, torch.Tensor] | None = None,
    head_values: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """Replace the model's projections by int8 or 4-bit ones, in place (activations become
    float32). ``importance``: the mean square of each input feature of a projection, by name
    (``calibration.input_importance``), which the 4-bit rounding weighs its errors by.
    ``head_values``: a 4-bit head's values and scales rounded already (``gptq.gptq_weight4``)."""
    importance = importance or {}

    def quantized(name: str, weight: torch.Tensor, width: int) -> Q8Linear:
        if width == 4:
            return Q4Linear.from_weight(kernels, weight, importance.get(name))
        return Q8Linear.from_weight(kernels, weight)

    for i, block in enumerate(model.blocks):
        for name in _LINEARS:
            linear = getattr(block, name)
            setattr(block, name, quantized(f"blocks.{i}.{name}", linear.weight, bits.blocks))
    weight: torch.Tensor = model.lm_head.weight  # type: ignore[assignment]
    head: Q8Linear
    if bits.head == 4 and head_values is not None:
        head = Q4Linear(kernels, pack_weight4(*head_values), int(weight.shape[0]))
    else:
        head = quantized("lm_head", weight, bits.head)
    lookup = Q8Linear.from_weight(kernels, weight) if tied and bits.lookup == 8 else None
    _install(model, kernels, head, tied=tied, lookup=lookup)


def empty_q8_model(
    model: Gemma3Model,
    kernels: Q8Kernels,
    *,
    tied: bool,
    bits: BlockBits = BlockBits(),
    huge_pages: bool = True,
) -> None:
    """Give a meta-device model int8 or 4-bit projections of the right shapes, to load a state
    dict into (``huge_pages``: moved into 2 MB pages once loaded)."""

    def empty(out_features: int, in_features: int, width: int) -> Q8Linear:
        groups = 8 if width == 8 else 4  # 64-byte groups per block and tile
        tiles, blocks = -(-out_features // LANES), in_features // BLOCK
        packed = (
            torch.empty((tiles, blocks, groups, LANES, 4), dtype=torch.uint8, device="meta"),
            torch.empty((tiles, blocks, LANES), dtype=torch.float16, device="meta"),
            torch.empty(1, device="meta"),
        )
        return (Q4Linear if width == 4 else Q8Linear)(kernels, packed, out_features)

    for block in model.blocks:
        for name in _LINEARS:
            linear = getattr(block, name)
            setattr(block, name, empty(linear.out_features, linear.in_features, bits.blocks))
    head: nn.Linear = model.lm_head  # type: ignore[assignment]
    shape = (head.out_features, head.in_features)
    lookup = empty(*shape, 8) if tied and bits.lookup == 8 else None
    quantized = empty(*shape, bits.head)
    _install(model, kernels, quantized, tied=tied, lookup=lookup, huge_pages=huge_pages)


def _install(
    model: Gemma3Model,
    kernels: Q8Kernels,
    head: Q8Linear,
    *,
    tied: bool,
    lookup: Q8Linear | None = None,
    huge_pages: bool = True,
) -> None:
    model.lm_head = head
    head.finds_argmax = model.config.final_logit_softcapping is None
    if tied:  # the float table goes: lookups read the head's table, or their own (``lookup``)
        model.embed_lookup = Q8Embedding(lookup or head, own=lookup is not None)
        model.embed = None  # type: ignore[assignment]
    model.compute_dtype = torch.float32
    model.cache_dtype = torch.float16  # the fused blocks keep keys and values in float16
    model.block_decoder = Q8BlockDecoder(kernels, model.blocks)
    if huge_pages:
        hold_in_huge_pages_once_loaded(model)
    model.argmax = kernels.argmax
    model.top_k = kernels.top_k
    model.soft_cap_ = kernels.soft_cap_
