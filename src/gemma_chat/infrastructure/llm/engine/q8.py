"""int8 weights and activations in blocks of 32 (llama.cpp's Q8_0), computed by a small C kernel.

On this class of CPU, torch's int8 paths are slower than bfloat16 (see the measurements in
DEVELOPMENT.md), so the kernel is ours: ``kernels/q8.c``, compiled once with the system's C
compiler for the machine it runs on and cached beside the converted models. Its rows are
reduced in a fixed order, so results do not depend on the batch size. Perplexity on the
embedded model: +0.3 % over float32 (benchmarks/engine_benchmark.py).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import nn

from gemma_chat.infrastructure.llm.engine.model import Block, Gemma3Model, KVCache, attention

__all__ = [
    "BLOCK",
    "Q8BlockDecoder",
    "Q8Embedding",
    "Q8Kernels",
    "Q8Linear",
    "empty_q8_model",
    "load_kernels",
    "quantize_model",
    "quantize_weight",
]

logger = logging.getLogger(__name__)

BLOCK = 32
_SOURCE = Path(__file__).parent / "kernels" / "q8.c"
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-lm"]
_P, _I = ctypes.c_void_p, ctypes.c_int64


class _WeightArgs(ctypes.Structure):
    _fields_ = [("q", _P), ("s", _P), ("n", _I), ("k", _I)]


class _BlockArgs(ctypes.Structure):
    _fields_ = [
        ("qkv", _WeightArgs),
        ("o", _WeightArgs),
        ("gate_up", _WeightArgs),
        ("down", _WeightArgs),
        *(
            (name, _P)
            for name in (
                "input_norm",
                "q_norm",
                "k_norm",
                "post_attention_norm",
                "pre_feedforward_norm",
                "post_feedforward_norm",
            )
        ),
        *(
            (name, _I)
            for name in ("hidden", "heads", "kv_heads", "head_dim", "intermediate", "window")
        ),
        ("eps", ctypes.c_float),
        ("scaling", ctypes.c_float),
    ]


class Q8Kernels:
    def __init__(self, library: ctypes.CDLL) -> None:
        self._lib = library
        library.q8_quantize_rows.argtypes = [_P, _P, _P, _I, _I]
        library.q8_quantize_rows.restype = None
        library.q8_matmul.argtypes = [_P, _P, _P, _P, _P, _I, _I, _I]
        library.q8_matmul.restype = None
        library.gemma_decode_block.argtypes = [
            ctypes.POINTER(_BlockArgs),
            _P,
            _I,
            _P,
            _P,
            _P,
            _P,
            _P,
            _P,
            _I,
        ]
        library.gemma_decode_block.restype = None
        library.gemma_block_qkv.argtypes = [
            ctypes.POINTER(_BlockArgs),
            _P,
            _I,
            _P,
            _P,
            _P,
            _P,
            _P,
            _P,
            _I,
            _P,
        ]
        library.gemma_block_qkv.restype = None
        library.gemma_block_out.argtypes = [ctypes.POINTER(_BlockArgs), _P, _P, _I]
        library.gemma_block_out.restype = None

    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` [M, K] float32 -> int8 values [M, K] and float32 scales [M, K/32]."""
        x = x.contiguous()
        m, k = x.shape
        q = torch.empty((m, k), dtype=torch.int8)
        s = torch.empty((m, k // BLOCK), dtype=torch.float32)
        self._lib.q8_quantize_rows(x.data_ptr(), q.data_ptr(), s.data_ptr(), m, k)
        return q, s

    def matmul(
        self, xq: torch.Tensor, xs: torch.Tensor, wq: torch.Tensor, ws: torch.Tensor
    ) -> torch.Tensor:
        """[M, K] x [N, K]^T -> [M, N] float32."""
        m, k = xq.shape
        n = wq.shape[0]
        y = torch.empty((m, n), dtype=torch.float32)
        self._lib.q8_matmul(
            xq.data_ptr(), xs.data_ptr(), wq.data_ptr(), ws.data_ptr(), y.data_ptr(), m, n, k
        )
        return y

    def decode_block(
        self,
        block: _BlockArgs,
        x: torch.Tensor,  # [R, E] float32 rows (tokens), updated in place
        slots: torch.Tensor,  # [R] int64
        positions: torch.Tensor,  # [R] int64
        rope: tuple[torch.Tensor, torch.Tensor],  # cos, sin: [P, D] float32
        cache: tuple[torch.Tensor, torch.Tensor],  # this layer's keys, values: [slots, H, T, D]
    ) -> None:
        """The whole block, attention included."""
        keys, values = cache
        self._lib.gemma_decode_block(
            ctypes.byref(block),
            x.data_ptr(),
            x.shape[0],
            slots.data_ptr(),
            positions.data_ptr(),
            rope[0].data_ptr(),
            rope[1].data_ptr(),
            keys.data_ptr(),
            values.data_ptr(),
            keys.shape[2],
        )

    def block_qkv(
        self,
        block: _BlockArgs,
        x: torch.Tensor,  # [R, E]
        slots: torch.Tensor,
        positions: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        cache: tuple[torch.Tensor, torch.Tensor],
        queries: int,
    ) -> torch.Tensor:
        """The block up to attention: keys and values cached, queries returned [R, queries]."""
        keys, values = cache
        q = torch.empty((x.shape[0], queries), dtype=torch.float32)
        self._lib.gemma_block_qkv(
            ctypes.byref(block),
            x.data_ptr(),
            x.shape[0],
            slots.data_ptr(),
            positions.data_ptr(),
            rope[0].data_ptr(),
            rope[1].data_ptr(),
            keys.data_ptr(),
            values.data_ptr(),
            keys.shape[2],
            q.data_ptr(),
        )
        return q

    def block_out(self, block: _BlockArgs, x: torch.Tensor, attention: torch.Tensor) -> None:
        """The block after attention: x [R, E] updated from the attention output [R, NQ]."""
        self._lib.gemma_block_out(
            ctypes.byref(block), x.data_ptr(), attention.data_ptr(), x.shape[0]
        )


def load_kernels(cache_dir: Path) -> Q8Kernels | None:
    """The compiled kernels, built on first use; None when no C compiler can build them."""
    source = _SOURCE.read_bytes()
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        logger.warning("No C compiler found: the int8 kernels are unavailable")
        return None
    key = hashlib.sha256(source + " ".join([compiler, *_FLAGS]).encode() + _cpu_id()).hexdigest()
    target = Path(cache_dir) / "kernels" / f"q8-{key[:16]}.so"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            result = subprocess.run(
                [compiler, str(_SOURCE), "-o", tmp, *_FLAGS], capture_output=True, text=True
            )
            error = result.stderr.strip() if result.returncode else ""
        except OSError as exc:
            error = str(exc)
        if error:
            os.unlink(tmp)
            logger.warning("Could not build the int8 kernels: %s", error[:500])
            return None
        os.replace(tmp, target)
    try:
        return Q8Kernels(ctypes.CDLL(str(target)))
    except OSError as exc:  # a stale or foreign build
        logger.warning("Could not load the int8 kernels (%s); rebuilding next time", exc)
        target.unlink(missing_ok=True)
        return None


def _cpu_id() -> bytes:
    # -march=native builds for this CPU: a different CPU needs its own build.
    try:
        flags = next(
            line
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("flags")
        )
    except (OSError, StopIteration):
        flags = ""
    return flags.encode()


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float -> int8 [N, K] and float32 scales [N, K/32], rounding to nearest."""
    w = weight.float().reshape(weight.shape[0], -1, BLOCK)  # [N, K/32, 32]
    scale = w.abs().amax(dim=-1) / 127.0  # [N, K/32]
    inverse = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    q = torch.round(w * inverse.unsqueeze(-1)).clamp(-127, 127).to(torch.int8)
    return q.reshape(weight.shape), scale.contiguous()


class Q8Linear(nn.Module):
    """``y = x W^T`` with W in int8 blocks; activations are quantized per row as they come."""

    q: torch.Tensor
    scale: torch.Tensor

    def __init__(self, kernels: Q8Kernels, q: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.kernels = kernels
        self.register_buffer("q", q)  # [N, K] int8
        self.register_buffer("scale", scale)  # [N, K/32] float32

    @property
    def out_features(self) -> int:
        return int(self.q.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1]).float()  # [M, K]
        xq, xs = self.kernels.quantize(rows)
        y = self.kernels.matmul(xq, xs, self.q, self.scale)  # [M, N]
        return y.view(*shape[:-1], self.out_features)


class Q8Embedding(nn.Module):
    """Looks rows up in the int8 table that also serves as the (tied) output projection."""

    def __init__(self, table: Q8Linear) -> None:
        super().__init__()
        self._table = [table]  # not a submodule: the table is saved once, as lm_head

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        table = self._table[0]
        q = table.q[ids].float()  # [..., K]
        scale = table.scale[ids].repeat_interleave(BLOCK, dim=-1)  # [..., K]
        return q * scale


_LINEARS = ("qkv", "o", "gate_up", "down")
_NORMS = (
    "input_norm",
    "q_norm",
    "k_norm",
    "post_attention_norm",
    "pre_feedforward_norm",
    "post_feedforward_norm",
)


class Q8BlockDecoder:
    """Every block in one C call (``gemma_decode_block``) instead of ~40 torch operations: at one
    token per sequence those small operations, not the matrix products, were most of a decode
    step (8 of 19 ms on the embedded model). Prefill goes the same way, so a token's keys and
    values are the same bits whether its prompt was prefilled whole, in pieces, or decoded."""

    def __init__(self, kernels: Q8Kernels, blocks: nn.ModuleList) -> None:
        self.kernels = kernels
        self._blocks = blocks
        self._args: list[_BlockArgs] = []
        self._alive: list[torch.Tensor] = []  # tensors the C structs point into

    def _build(self) -> None:
        for block in self._blocks:
            assert isinstance(block, Block)

            norms = {}
            for name in _NORMS:
                scale = (1.0 + getattr(block, name).weight.float()).contiguous()
                self._alive.append(scale)
                norms[name] = scale.data_ptr()
            config = block.config
            self._args.append(
                _BlockArgs(
                    qkv=self._weight(block.qkv),
                    o=self._weight(block.o),
                    gate_up=self._weight(block.gate_up),
                    down=self._weight(block.down),
                    **norms,
                    hidden=config.hidden_size,
                    heads=block.heads,
                    kv_heads=block.kv_heads,
                    head_dim=block.head_dim,
                    intermediate=config.intermediate_size,
                    window=config.sliding_window if block.sliding else 0,
                    eps=config.rms_norm_eps,
                    scaling=block.scaling,
                )
            )

    def _weight(self, linear: nn.Module) -> _WeightArgs:
        assert isinstance(linear, Q8Linear)
        self._alive += [linear.q, linear.scale]
        n, k = linear.q.shape
        return _WeightArgs(linear.q.data_ptr(), linear.scale.data_ptr(), n, k)

    def __call__(
        self,
        model: Gemma3Model,
        x: torch.Tensor,  # [B, S, E]
        positions: torch.Tensor,  # [B, S]
        slots: torch.Tensor,  # [B]
        cache: KVCache,
        decoding: bool,
    ) -> torch.Tensor:
        if not self._args:
            self._build()
        b, s, e = x.shape
        # Every token is a row of its own, with its slot and position: a prompt's tokens are
        # written to the cache first, then each attends to the positions up to its own.
        rows = x.reshape(b * s, e).float().contiguous()  # [B*S, E], updated block by block
        at = positions.reshape(b * s).to(torch.int64).contiguous()
        row_slots = slots.to(torch.int64).repeat_interleave(s).contiguous()
        length = int(at.max()) + 1
        ropes = {
            local: model.rope_tables(local, length) for local in set(model.config.sliding_layers)
        }
        masks: dict[bool, torch.Tensor] = {}
        for layer, (block, args) in enumerate(zip(self._blocks, self._args, strict=True)):
            assert isinstance(block, Block)
            rope = ropes[block.sliding]
            layer_cache = (cache.k[layer], cache.v[layer])
            if decoding:  # one query per sequence: attention in C too
                self.kernels.decode_block(args, rows, row_slots, at, rope, layer_cache)
                continue
            # Prefill: attention of many queries is a matrix product, which torch does best; and
            # each query row is computed the same way however the prompt is split, so a prompt
            # prefilled after a reused prefix equals one prefilled whole.
            q = self.kernels.block_qkv(args, rows, row_slots, at, rope, layer_cache, block.n_q)
            q = q.view(b, s, block.heads, block.head_dim).transpose(1, 2)  # [B, H, S, D]
            keys = layer_cache[0][slots, :, :length]  # [B, H_kv, T, D]
            values = layer_cache[1][slots, :, :length]
            if block.sliding not in masks:
                masks[block.sliding] = model.attention_mask(positions, length, block.sliding)
            out = attention(q, keys, values, masks[block.sliding], block.scaling)  # [B, H, S, D]
            self.kernels.block_out(args, rows, out.transpose(1, 2).reshape(b * s, block.n_q))
        return rows.view(b, s, e)


def quantize_model(model: Gemma3Model, kernels: Q8Kernels, *, tied: bool) -> None:
    """Replace the model's projections by int8 ones, in place (activations become float32)."""
    for block in model.blocks:
        for name in _LINEARS:
            linear = getattr(block, name)
            setattr(block, name, Q8Linear(kernels, *quantize_weight(linear.weight)))
    weight: torch.Tensor = model.lm_head.weight  # type: ignore[assignment]
    head = Q8Linear(kernels, *quantize_weight(weight))
    model.lm_head = head
    if tied:  # one int8 table for both lookup and projection: the float table goes
        model.embed_lookup = Q8Embedding(head)
        model.embed = None  # type: ignore[assignment]
    model.compute_dtype = torch.float32
    model.block_decoder = Q8BlockDecoder(kernels, model.blocks)


def empty_q8_model(model: Gemma3Model, kernels: Q8Kernels, *, tied: bool) -> None:
    """Give a meta-device model int8 projections of the right shapes, to load a state dict into."""

    def empty(out_features: int, in_features: int) -> Q8Linear:
        return Q8Linear(
            kernels,
            torch.empty((out_features, in_features), dtype=torch.int8, device="meta"),
            torch.empty((out_features, in_features // BLOCK), device="meta"),
        )

    for block in model.blocks:
        for name in _LINEARS:
            linear = getattr(block, name)
            setattr(block, name, empty(linear.out_features, linear.in_features))
    head: nn.Linear = model.lm_head  # type: ignore[assignment]
    table = empty(head.out_features, head.in_features)
    model.lm_head = table
    if tied:
        model.embed_lookup = Q8Embedding(table)
        model.embed = None  # type: ignore[assignment]
    model.compute_dtype = torch.float32
    model.block_decoder = Q8BlockDecoder(kernels, model.blocks)
