"""A lean Gemma 3 text model for CPU decoding, in the spirit of gpt-fast.

The same weights as transformers' ``Gemma3ForCausalLM``, with fewer operations per step:
q/k/v and gate/up projections fused into one matmul each, RMSNorm scales precomputed, rotary
tables precomputed, and a KV cache (``kv_cache.py``) with one row ("slot") per sequence, so that
several sequences at different positions decode in one batched step.
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
        slots: torch.Tensor,  # [B] cache rows
        positions: torch.Tensor,  # [B, S]
        cache: KVCache,
        mask: torch.Tensor,  # [B, 1, S, T] additive
        length: int,  # T: cache positions attended to
        contiguous: int | None = None,  # first slot, when ``slots`` is a run of slots
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

        # Write the new keys/values at their positions, then attend over the first T.
        layer_k, layer_v = cache.k[self.layer], cache.v[self.layer]  # [slots, H_kv, T_cap, D]
        rows = slots.view(b, 1, 1).expand(b, self.kv_heads, s)
        heads = torch.arange(self.kv_heads).view(1, -1, 1).expand(b, -1, s)
        cols = positions.view(b, 1, s).expand(b, self.kv_heads, s)
        layer_k[rows, heads, cols] = k.to(layer_k.dtype)
        layer_v[rows, heads, cols] = v.to(layer_v.dtype)
        if contiguous is not None:  # a view: no copy of the cache
            keys = layer_k[contiguous : contiguous + b, :, :length]  # [B, H_kv, T, D]
            values = layer_v[contiguous : contiguous + b, :, :length]
        else:
            keys = layer_k[slots, :, :length]  # a copy, for scattered slots
            values = layer_v[slots, :, :length]
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
        length = int(positions.max().item()) + 1  # T
        cache.ensure(int(slots.max().item()) + 1, length)
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
        softcap = self.config.final_logit_softcapping
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

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
        pass over the weights."""
        assert self.block_decoder is not None, "forward_rows needs the fused blocks"
        length = int(positions.max().item()) + 1
        cache.ensure(int(slots.max().item()) + 1, length)
        lookup = self.embed_lookup if self.embed_lookup is not None else self.embed
        x = lookup(input_ids).to(self.compute_dtype)
        x = x * torch.tensor(self.embed_scale, dtype=self.compute_dtype)  # [R, E]
        x = select_rows(self.block_decoder.rows(self, x, positions, slots, cache), wanted)
        logits: torch.Tensor = self.lm_head(self.norm(x)).float()  # [W, V]
        softcap = self.config.final_logit_softcapping
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

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
        first = int(slots[0])
        run = first if slots.tolist() == list(range(first, first + len(slots))) else None
        for block in self.blocks:
            assert isinstance(block, Block)
            local = block.sliding
            x = block(x, ropes[local], slots, positions, cache, masks[local], length, run, decoding)
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
