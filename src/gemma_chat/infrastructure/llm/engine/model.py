"""A lean Gemma 3 text model for CPU decoding, in the spirit of gpt-fast.

The same weights as transformers' ``Gemma3ForCausalLM``, with fewer operations per step:
q/k/v and gate/up projections fused into one matmul each, RMSNorm scales precomputed, rotary
tables precomputed, and a KV cache (``kv_cache.py``) with one slot per sequence, so that several
sequences at different positions decode in one batched step. A pass feeds at most the cache's
``chunk`` tokens of a sequence (its sliding-window layers keep a ring of the window and one
chunk): longer prompts go in several passes, which give the same results.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from gemma_chat.infrastructure.llm.engine.config import Gemma3Config
from gemma_chat.infrastructure.llm.engine.kv_cache import KVCache
from gemma_chat.infrastructure.llm.generation.sampling import finite_argmax

__all__ = ["Block", "BlockDecoder", "Gemma3Model", "select_rows"]

# Rows of one pass of the fused blocks at most: their activations, not the weights, are then
# most of a pass's memory.
_ROWS_PER_PASS = 1024


class BlockDecoder(Protocol):
    """Runs every block at once (e.g. fused in C) on rows of tokens of any sequences, each with
    its position and cache slot: x [R, E] -> [R, E]."""

    def rows(
        self,
        model: Gemma3Model,
        x: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor,
        cache: KVCache,
    ) -> torch.Tensor: ...


class RMSNorm(nn.Module):
    """Gemma's RMSNorm, ``x / rms(x) * (1 + w)`` computed in float32."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * (1.0 + self.weight.float())).type_as(x)


class Block(nn.Module):
    def __init__(self, config: Gemma3Config, layer: int) -> None:
        super().__init__()
        c = config
        self.config = config
        self.layer = layer
        self.sliding = c.sliding_layers[layer]
        self.n_q = c.num_heads * c.head_dim
        self.n_kv = c.num_kv_heads * c.head_dim
        self.heads, self.kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, c.head_dim
        self.scaling = c.query_pre_attn_scalar**-0.5
        self.qkv = nn.Linear(c.hidden_size, self.n_q + 2 * self.n_kv, bias=False)
        self.o = nn.Linear(self.n_q, c.hidden_size, bias=False)
        self.gate_up = nn.Linear(c.hidden_size, 2 * c.intermediate_size, bias=False)
        self.down = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)
        self.q_norm = RMSNorm(c.head_dim, c.rms_norm_eps)
        self.k_norm = RMSNorm(c.head_dim, c.rms_norm_eps)
        self.input_norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.pre_feedforward_norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_feedforward_norm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,  # [B, S, E]
        rope: tuple[torch.Tensor, torch.Tensor],  # cos, sin: [B, S, D]
        slots: list[int],  # [B] cache slots
        positions: torch.Tensor,  # [B, S]
        cache: KVCache,
        mask: torch.Tensor,  # [B, 1, S, T] additive
        length: int,  # T: cache positions attended to
        decoding: bool = False,
    ) -> torch.Tensor:
        b, s, _ = x.shape
        h = self.input_norm(x)
        q, k, v = self.qkv(h).split([self.n_q, self.n_kv, self.n_kv], dim=-1)
        q = self.q_norm(q.view(b, s, self.heads, self.head_dim)).transpose(1, 2)  # [B, H, S, D]
        k = self.k_norm(k.view(b, s, self.kv_heads, self.head_dim)).transpose(1, 2)
        v = v.view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)  # [B, H_kv, S, D]
        cos, sin = rope[0].unsqueeze(1), rope[1].unsqueeze(1)  # [B, 1, S, D]
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin

        # Write the new keys/values at their positions in each sequence's slot (position p at
        # p % capacity), then attend over positions [0, T): a sliding layer's ring gives back its
        # window, and the older positions it no longer holds are masked out.
        layers = [cache.layer(slot, self.layer) for slot in slots]  # [H_kv, capacity, D] each
        for i, (layer_k, layer_v) in enumerate(layers):
            at = positions[i] % layer_k.shape[1]
            layer_k[:, at] = k[i].to(layer_k.dtype)
            layer_v[:, at] = v[i].to(layer_v.dtype)
        held = [
            (_positions(layer_k, length), _positions(layer_v, length))
            for layer_k, layer_v in layers
        ]
        if b == 1:  # a view where the slot holds [0, T) in order: no copy
            keys, values = held[0][0].unsqueeze(0), held[0][1].unsqueeze(0)  # [1, H_kv, T, D]
        else:
            keys = torch.stack([k for k, _ in held])  # [B, H_kv, T, D]
            values = torch.stack([v for _, v in held])
        keys, values = keys.to(q.dtype), values.to(q.dtype)  # a cache may hold a narrower dtype
        if decoding:  # one query per sequence: the fused kernel, the same for every step
            out = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=mask, scale=self.scaling, enable_gqa=True
            )
        else:
            out = _attention(q, keys, values, mask, self.scaling)  # [B, H, S, D]
        out = self.o(out.transpose(1, 2).reshape(b, s, self.n_q))
        x = x + self.post_attention_norm(out)

        h = self.pre_feedforward_norm(x)
        gate, up = self.gate_up(h).chunk(2, dim=-1)
        h = self.down(F.gelu(gate, approximate="tanh") * up)
        result: torch.Tensor = x + self.post_feedforward_norm(h)
        return result


def _positions(layer: torch.Tensor, length: int) -> torch.Tensor:
    """Positions [0, length) of one slot's layer [H_kv, capacity, D] (a ring wraps around)."""
    if length <= layer.shape[1]:
        return layer[:, :length]
    return layer[:, torch.arange(length) % layer.shape[1]]


def _passes(slots: list[int], chunk: int, most: int) -> list[list[int]]:
    """Rows in passes, in order: at most ``chunk`` rows of a slot and ``most`` rows in all in a
    pass (a sequence's rows come in order, so each pass continues the one before)."""
    passes: list[list[int]] = [[]]
    counts: dict[int, int] = {}
    for row, slot in enumerate(slots):
        if counts.get(slot, 0) == chunk or len(passes[-1]) == most:
            passes.append([])
            counts = {}
        passes[-1].append(row)
        counts[slot] = counts.get(slot, 0) + 1
    return passes


def _attention(
    q: torch.Tensor,  # [B, H, S, D]
    k: torch.Tensor,  # [B, H_kv, T, D]
    v: torch.Tensor,  # [B, H_kv, T, D]
    mask: torch.Tensor,  # [B, 1, S, T]
    scale: float,
) -> torch.Tensor:
    """Attention written out rather than SDPA: each query row is computed the same way whatever
    the number of rows, so a token's output does not depend on how the prompt was split into
    prefill chunks or on the batch it decodes in (greedy outputs stay equal)."""
    b, h, s, d = q.shape
    groups = h // k.shape[1]
    q = q.reshape(b, k.shape[1], groups * s, d)  # [B, H_kv, G*S, D]: query heads share a kv head
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale  # [B, H_kv, G*S, T]
    scores = scores.view(b, h, s, -1) + mask
    weights = torch.softmax(scores, dim=-1).to(v.dtype).view(b, k.shape[1], groups * s, -1)
    return torch.matmul(weights, v).view(b, h, s, d)


def select_rows(x: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """Rows ``rows`` of ``x`` [R, ...] (``x`` itself when they are all of them, in order).

    index_select, not x[rows]: indexing by a list started torch's OpenMP threads, whose spinning
    afterwards took a core from the int8 kernels' own threads (DEVELOPMENT.md, "Benchmark")."""
    if rows == list(range(x.shape[0])):
        return x
    return x.index_select(0, torch.tensor(rows, dtype=torch.long))


def _torch_top_k(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    values, ids = torch.topk(logits.float(), k, dim=-1)
    return values, ids


def _torch_soft_cap_(logits: torch.Tensor, cap: float) -> None:
    # The out-of-place formula's operations, in place: the same bits.
    logits.div_(cap).tanh_().mul_(cap)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Gemma3Model(nn.Module):
    def __init__(self, config: Gemma3Config) -> None:
        super().__init__()
        self.config = config
        # Given an empty table: random initialisation (normal_) would cost a second for nothing.
        table = torch.empty(config.vocab_size, config.hidden_size)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size, _weight=table)
        self.embed.weight.requires_grad_(False)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.embed_scale = math.sqrt(config.hidden_size)
        # Usually tied to the embedding table (the same tensor, held once); an adapter may swap
        # in a faster (e.g. quantized) projection.
        self.lm_head: nn.Module = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.embed_lookup: nn.Module | None = None  # an int8 table instead of embed (q8.py)
        self.compute_dtype = torch.bfloat16  # activations and KV cache; set by the loader
        self.cache_dtype: torch.dtype | None = None  # the KV cache's, if not compute_dtype
        self.block_decoder: BlockDecoder | None = None  # all blocks fused (q8.py)
        # Greedy tokens, and sampling candidates (each row's k largest logits, largest first),
        # of a batch of logits [W, V]; q8.py brings faster ones.
        self.argmax: Callable[[torch.Tensor], list[int]] = finite_argmax
        self.top_k: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]] = _torch_top_k
        # ``tanh(logits / cap) * cap`` in place (a final logit cap); q8.py brings the kernels'.
        self.soft_cap_: Callable[[torch.Tensor, float], None] = _torch_soft_cap_
        self._rope_cache: dict[bool, tuple[torch.Tensor, torch.Tensor]] = {}

    def rope_tables(self, local: bool, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for positions [0, length): [length, D] each, float32."""
        cached = self._rope_cache.get(local)
        if cached is None or cached[0].shape[0] < length:
            c = self.config
            size = max(length, 4096 if cached is None else 2 * cached[0].shape[0])
            theta = c.rope_theta_local if local else c.rope_theta_global
            factor = c.rope_scaling_local if local else c.rope_scaling_global
            inv_freq = 1.0 / (theta ** (torch.arange(0, c.head_dim, 2).float() / c.head_dim))
            inv_freq = inv_freq / factor  # linear scaling: positions divided by the factor
            freqs = torch.arange(size).float()[:, None] * inv_freq[None, :]
            emb = torch.cat((freqs, freqs), dim=-1)
            cached = (emb.cos(), emb.sin())
            self._rope_cache[local] = cached
        return cached

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, S]
        positions: torch.Tensor,  # [B, S] absolute positions
        slots: torch.Tensor,  # [B] cache rows
        cache: KVCache,
        last_only: bool = True,
        decoding: bool = False,
    ) -> torch.Tensor:
        """Logits: [B, V] for each sequence's last position (or [B, S, V])."""
        s = input_ids.shape[1]
        if s > cache.chunk:  # in passes of the cache's chunk: its rings hold one at a time
            pieces = [
                self.forward(
                    input_ids[:, i : i + cache.chunk],
                    positions[:, i : i + cache.chunk],
                    slots,
                    cache,
                    last_only=last_only,
                    decoding=decoding,
                )
                for i in range(0, s, cache.chunk)
            ]
            return pieces[-1] if last_only else torch.cat(pieces, dim=1)
        for slot, last in zip(slots.tolist(), positions.max(dim=1).values.tolist(), strict=True):
            cache.ensure(slot, last + 1)
        length = int(positions.max().item()) + 1  # T
        dtype = self.compute_dtype
        lookup = self.embed_lookup if self.embed_lookup is not None else self.embed
        x = lookup(input_ids).to(dtype)
        x = x * torch.tensor(self.embed_scale, dtype=dtype)  # [B, S, E]
        if self.block_decoder is not None:  # every token a row: [B*S, E]
            b, n = input_ids.shape
            rows = self.block_decoder.rows(
                self, x.reshape(b * n, -1), positions.reshape(-1), slots.repeat_interleave(n), cache
            )
            x = rows.view(b, n, -1)
        else:
            x = self._blocks(x, positions, slots, cache, length, decoding)
        if last_only:
            x = x[:, -1]  # [B, E]
        x = self.norm(x)
        logits: torch.Tensor = self.lm_head(x).float()
        return self._soft_capped(logits)

    @property
    def kv_dtype(self) -> torch.dtype:
        """The dtype of the keys and values a ``KVCache`` for this model holds."""
        return self.cache_dtype or self.compute_dtype

    @property
    def takes_rows(self) -> bool:
        """Whether ``forward_rows`` works: several sequences' prompts and next tokens in one
        batch (with the fused blocks)."""
        return self.block_decoder is not None

    def forward_rows(
        self,
        input_ids: torch.Tensor,  # [R] tokens of any sequences
        positions: torch.Tensor,  # [R]
        slots: torch.Tensor,  # [R] cache rows
        cache: KVCache,
        wanted: list[int],  # rows whose next-token logits are needed (each sequence's last)
    ) -> torch.Tensor:
        """Logits [len(wanted), V]: prompts being prefilled and sequences being decoded, in one
        pass over the weights (several for long prompts: ``_passes``)."""
        assert self.block_decoder is not None, "forward_rows needs the fused blocks"
        row_slots = slots.tolist()
        last: dict[int, int] = {}
        for slot, position in zip(row_slots, positions.tolist(), strict=True):
            last[slot] = max(last.get(slot, 0), position)
        for slot, position in last.items():
            cache.ensure(slot, position + 1)
        passes = _passes(row_slots, cache.chunk, _ROWS_PER_PASS)
        if len(passes) == 1:
            x = select_rows(self._rows(input_ids, positions, slots, cache), wanted)
        else:  # one after another: each continues the sequences the one before fed
            out: dict[int, torch.Tensor] = {}
            keep = set(wanted)
            for rows in passes:
                index = torch.tensor(rows, dtype=torch.long)
                ids, at, rows_slots = (
                    t.index_select(0, index) for t in (input_ids, positions, slots)
                )
                y = self._rows(ids, at, rows_slots, cache)
                out.update((row, y[i]) for i, row in enumerate(rows) if row in keep)
            x = torch.stack([out[row] for row in wanted])
        logits: torch.Tensor = self.lm_head(self.norm(x)).float()  # [W, V]
        return self._soft_capped(logits)

    def _soft_capped(self, logits: torch.Tensor) -> torch.Tensor:
        """``tanh(logits / cap) * cap`` where the config has a final logit cap (Gemma 2 had
        one; Gemma 3 has none), in place (``soft_cap_``): no new [rows, vocabulary] tensors."""
        cap = self.config.final_logit_softcapping
        if cap:
            self.soft_cap_(logits, cap)
        return logits

    def _rows(
        self, input_ids: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, cache: KVCache
    ) -> torch.Tensor:
        """The fused blocks on rows of tokens: [R] -> hidden states [R, E]."""
        assert self.block_decoder is not None
        lookup = self.embed_lookup if self.embed_lookup is not None else self.embed
        x = lookup(input_ids).to(self.compute_dtype)
        x = x * torch.tensor(self.embed_scale, dtype=self.compute_dtype)  # [R, E]
        return self.block_decoder.rows(self, x, positions, slots, cache)

    def _blocks(
        self,
        x: torch.Tensor,  # [B, S, E]
        positions: torch.Tensor,  # [B, S]
        slots: torch.Tensor,  # [B]
        cache: KVCache,
        length: int,
        decoding: bool,
    ) -> torch.Tensor:
        dtype = self.compute_dtype
        masks, ropes = {}, {}
        for local in set(self.config.sliding_layers):
            cos, sin = self.rope_tables(local, length)
            ropes[local] = (cos[positions].to(dtype), sin[positions].to(dtype))  # [B, S, D]
            masks[local] = self._mask(positions, length, local, dtype)
        slot_list = slots.tolist()
        for block in self.blocks:
            assert isinstance(block, Block)
            local = block.sliding
            x = block(x, ropes[local], slot_list, positions, cache, masks[local], length, decoding)
        return x

    def _mask(
        self, positions: torch.Tensor, length: int, local: bool, dtype: torch.dtype
    ) -> torch.Tensor:
        """Additive mask [B, 1, S, T]: a query sees keys at or before it (within the window)."""
        keys = torch.arange(length).view(1, 1, length)  # [1, 1, T]
        distance = positions.unsqueeze(-1) - keys  # [B, S, T]
        allowed = distance >= 0
        if local:
            allowed &= distance < self.config.sliding_window
        mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, float("-inf"))
        return mask.unsqueeze(1)
