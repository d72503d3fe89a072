"""Gemma 4's text model on the engine, as direct torch code over rows of tokens.

What transformers' ``Gemma4TextModel`` computes (``Gemma4Config`` lists how it differs from
Gemma 3), organised as the engine's Gemma 3 model is: every token of a pass is a row with its
position and cache slot, so prompts being prefilled and sequences being decoded go through the
weights together (``forward_rows``, the scheduler's batched path), and a sequence longer than the
cache's ``chunk`` goes in several passes. Keys and values live in the engine's ``KVCache`` (its
sliding layers in rings); a layer sharing another's keys and values reads that layer's. The
projections are ``nn.Linear`` (float weights) or the int8/4-bit ``Q8Linear`` (``quantize``):
there is no fused C block for Gemma 4, its int8 path is these torch operations around the int8
matrix products. Attention is computed per sequence, written out as the Gemma 3 model's
``_attention``, so that a row's result does not depend on the batch it runs in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from gemma_chat.infrastructure.llm.engine.config import Gemma4Config
from gemma_chat.infrastructure.llm.engine.kv_cache import KVCache
from gemma_chat.infrastructure.llm.engine.model import _passes, select_rows
from gemma_chat.infrastructure.llm.engine.q8 import (
    BLOCK,
    LANES,
    BlockBits,
    Q4Linear,
    Q8Kernels,
    Q8Linear,
    hold_in_huge_pages_once_loaded,
)
from gemma_chat.infrastructure.llm.generation.sampling import finite_argmax

__all__ = [
    "Gemma4Block",
    "Gemma4Model",
    "Part",
    "empty_quantized_gemma4",
    "gemma4_weight_sources",
    "load_gemma4_state_dict",
    "quantize_gemma4",
]

_INT8 = BlockBits()  # every projection in int8
_ROWS_PER_PASS = 1024  # as the Gemma 3 model: activations, not weights, bound a pass's memory


class ScaledRMSNorm(nn.Module):
    """Gemma 4's RMSNorm: ``x / rms(x) * w`` (no ``1 +``), or without a scale, in float32."""

    def __init__(self, dim: int, eps: float, *, with_scale: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight: nn.Parameter | None = (
            nn.Parameter(torch.ones(dim), requires_grad=False) if with_scale else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.pow(h.pow(2).mean(-1, keepdim=True) + self.eps, -0.5)
        if self.weight is not None:
            h = h * self.weight.float()
        return h.type_as(x)


class Expert(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(hidden, 2 * intermediate, bias=False)
        self.down = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        out: torch.Tensor = self.down(F.gelu(gate, approximate="tanh") * up)
        return out


class Gemma4Block(nn.Module):
    def __init__(self, config: Gemma4Config, layer: int) -> None:
        super().__init__()
        c = config
        self.layer = layer
        self.sliding = c.sliding_layers[layer]
        self.shared = c.kv_sources[layer] != layer  # attends to another layer's keys/values
        self.kv_heads, self.head_dim = c.kv_shape(self.sliding)
        self.heads = c.num_heads
        self.k_eq_v = c.attention_k_eq_v and not self.sliding
        self.n_q, self.n_kv = c.num_heads * self.head_dim, self.kv_heads * self.head_dim
        kv_outputs = 0 if self.shared else self.n_kv * (1 if self.k_eq_v else 2)
        e, eps = c.hidden_size, c.rms_norm_eps
        self.qkv = nn.Linear(e, self.n_q + kv_outputs, bias=False)
        self.o = nn.Linear(self.n_q, e, bias=False)
        self.q_norm = ScaledRMSNorm(self.head_dim, eps)
        if not self.shared:
            self.k_norm = ScaledRMSNorm(self.head_dim, eps)
        self.v_norm = ScaledRMSNorm(self.head_dim, eps, with_scale=False)
        intermediate = c.layer_intermediate_size(layer)
        self.gate_up = nn.Linear(e, 2 * intermediate, bias=False)
        self.down = nn.Linear(intermediate, e, bias=False)
        self.input_norm = ScaledRMSNorm(e, eps)
        self.post_attention_norm = ScaledRMSNorm(e, eps)
        self.pre_feedforward_norm = ScaledRMSNorm(e, eps)
        self.post_feedforward_norm = ScaledRMSNorm(e, eps)
        self.register_buffer("layer_scalar", torch.ones(1))
        self.layer_scalar: torch.Tensor
        self.top_k = c.top_k_experts
        self.router_scale: torch.Tensor
        self.per_expert_scale: torch.Tensor
        if c.num_experts:
            self.router = nn.Linear(e, c.num_experts, bias=False)  # float: it picks experts
            self.router_norm = ScaledRMSNorm(e, eps, with_scale=False)
            self.register_buffer("router_scale", torch.ones(e))
            self.register_buffer("per_expert_scale", torch.ones(c.num_experts))
            self.experts = nn.ModuleList(
                Expert(e, c.moe_intermediate_size) for _ in range(c.num_experts)
            )
            self.post_feedforward_norm_1 = ScaledRMSNorm(e, eps)
            self.pre_feedforward_norm_2 = ScaledRMSNorm(e, eps)
            self.post_feedforward_norm_2 = ScaledRMSNorm(e, eps)
        if c.ple_size:
            self.ple_gate = nn.Linear(e, c.ple_size, bias=False)
            self.ple_projection = nn.Linear(c.ple_size, e, bias=False)
            self.ple_post_norm = ScaledRMSNorm(e, eps)

    def forward(
        self,
        x: torch.Tensor,  # [R, E]
        rope: tuple[torch.Tensor, torch.Tensor],  # cos, sin of this kind of layer: [R, D]
        ple: torch.Tensor | None,  # this layer's per-layer input: [R, P]
        pass_: _Pass,
        cache: KVCache,
    ) -> torch.Tensor:
        r = x.shape[0]
        h = self.input_norm(x)
        projected = self.qkv(h)
        q = projected[:, : self.n_q].view(r, self.heads, self.head_dim)
        cos, sin = rope[0].unsqueeze(1), rope[1].unsqueeze(1)  # [R, 1, D]
        q = _rotate(self.q_norm(q), cos, sin)
        if not self.shared:
            k = projected[:, self.n_q : self.n_q + self.n_kv].view(r, self.kv_heads, self.head_dim)
            v = k if self.k_eq_v else projected[:, self.n_q + self.n_kv :].view(k.shape)
            v = self.v_norm(v)
            k = _rotate(self.k_norm(k), cos, sin)
            pass_.write(cache, self.layer, k, v)
        out = pass_.attend(cache, self.layer, q, self.sliding)  # [R, H*D]
        x = x + self.post_attention_norm(self.o(out))

        h = self.pre_feedforward_norm(x)
        gate, up = self.gate_up(h).chunk(2, dim=-1)
        mlp = self.down(F.gelu(gate, approximate="tanh") * up)
        if self.top_k:
            mlp = self.post_feedforward_norm_1(mlp) + self.post_feedforward_norm_2(self._moe(x))
        x = x + self.post_feedforward_norm(mlp)
        if ple is not None:
            g = F.gelu(self.ple_gate(x), approximate="tanh") * ple
            x = x + self.ple_post_norm(self.ple_projection(g))
        result: torch.Tensor = x * self.layer_scalar.to(x.dtype)
        return result

    def _moe(self, x: torch.Tensor) -> torch.Tensor:
        """The experts' sum for each row of the residual ``x`` [R, E]: the router picks
        ``top_k`` experts by their softmax probability, renormalised, times a per-expert scale."""
        scale = self.router_scale.to(x.dtype) * x.shape[-1] ** -0.5
        scores = self.router(self.router_norm(x) * scale)
        probabilities = torch.softmax(scores.float(), dim=-1)
        weights, chosen = torch.topk(probabilities, self.top_k, dim=-1)  # [R, K]
        weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights * self.per_expert_scale[chosen]
        h = self.pre_feedforward_norm_2(x)
        out = torch.zeros_like(h)
        for expert in sorted(set(chosen.flatten().tolist())):
            rows, slot = torch.where(chosen == expert)
            y = self.experts[expert](h.index_select(0, rows))
            out.index_add_(0, rows, (y * weights[rows, slot, None]).to(out.dtype))
        return out


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class _Pass:
    """One pass's rows grouped by sequence (cache slot): each sequence's rows, positions, the
    number of positions its queries see and its masks, computed once for every layer."""

    def __init__(self, positions: torch.Tensor, slots: torch.Tensor, window: int) -> None:
        self.groups: list[tuple[int, torch.Tensor, torch.Tensor, int, dict[bool, torch.Tensor]]]
        self.groups = []
        slot_list = slots.tolist()
        for slot in dict.fromkeys(slot_list):
            rows = torch.tensor([i for i, s in enumerate(slot_list) if s == slot])
            at = positions.index_select(0, rows)
            length = int(at.max()) + 1
            distance = at.view(-1, 1) - torch.arange(length).view(1, -1)  # [S, T]
            masks = {}
            for sliding in (False, True):
                allowed = distance >= 0
                if sliding:
                    allowed &= distance < window
                zero = torch.zeros(allowed.shape, dtype=torch.float32)
                masks[sliding] = zero.masked_fill(~allowed, float("-inf"))
            self.groups.append((slot, rows, at, length, masks))

    def write(self, cache: KVCache, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Keys and values [R, H_kv, D] at each row's position in its slot (p % capacity)."""
        for slot, rows, at, _, _ in self.groups:
            layer_k, layer_v = cache.layer(slot, layer)  # [H_kv, capacity, D]
            where = at % layer_k.shape[1]
            layer_k[:, where] = k.index_select(0, rows).transpose(0, 1).to(layer_k.dtype)
            layer_v[:, where] = v.index_select(0, rows).transpose(0, 1).to(layer_v.dtype)

    def attend(self, cache: KVCache, layer: int, q: torch.Tensor, sliding: bool) -> torch.Tensor:
        """Attention of the queries [R, H, D] over their sequences' positions: [R, H*D]."""
        r, heads, d = q.shape
        out = torch.empty((r, heads * d), dtype=q.dtype)
        for slot, rows, _, length, masks in self.groups:
            layer_k, layer_v = cache.layer(slot, layer)
            keys, values = _held(layer_k, length), _held(layer_v, length)  # [H_kv, T, D]
            kv_heads, s = keys.shape[0], rows.shape[0]
            query = q.index_select(0, rows).transpose(0, 1)  # [H, S, D]
            query = query.reshape(kv_heads, (heads // kv_heads) * s, d)  # heads sharing a kv head
            scores = torch.matmul(query, keys.to(q.dtype).transpose(-1, -2)).float()
            scores = scores.view(heads, s, length) + masks[sliding]  # not scaled: the norms do
            weights = torch.softmax(scores, dim=-1).to(q.dtype).view(kv_heads, -1, length)
            context = torch.matmul(weights, values.to(q.dtype)).view(heads, s, d)
            out.index_copy_(0, rows, context.transpose(0, 1).reshape(s, heads * d))
        return out


def _held(layer: torch.Tensor, length: int) -> torch.Tensor:
    """Positions [0, length) of one slot's layer [H_kv, capacity, D] (a ring wraps around)."""
    if length <= layer.shape[1]:
        return layer[:, :length]
    return layer[:, torch.arange(length) % layer.shape[1]]


def _torch_top_k(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    values, ids = torch.topk(logits.float(), k, dim=-1)
    return values, ids


class Gemma4Model(nn.Module):
    """The engine's model interface (``forward``, ``forward_rows``, ``kv_dtype``, ``argmax``,
    ``top_k``) for Gemma 4; ``takes_rows`` always: the scheduler batches it."""

    def __init__(self, config: Gemma4Config) -> None:
        super().__init__()
        c = self.config = config
        table = torch.empty(c.vocab_size, c.hidden_size)  # no random initialisation
        self.embed: nn.Embedding | None = nn.Embedding(c.vocab_size, c.hidden_size, _weight=table)
        self.embed.weight.requires_grad_(False)
        self.embed_lookup: nn.Module | None = None  # the int8 table instead of embed
        self.embed_scale = math.sqrt(c.hidden_size)
        if c.ple_size:
            width = c.num_layers * c.ple_size
            ple_table = torch.empty(c.ple_vocab_size, width)
            self.ple_embed: nn.Module = nn.Embedding(c.ple_vocab_size, width, _weight=ple_table)
            self.ple_embed.weight.requires_grad_(False)
            self.ple_projection = nn.Linear(c.hidden_size, width, bias=False)
            self.ple_norm = ScaledRMSNorm(c.ple_size, c.rms_norm_eps)
        self.blocks = nn.ModuleList(Gemma4Block(c, i) for i in range(c.num_layers))
        self.norm = ScaledRMSNorm(c.hidden_size, c.rms_norm_eps)
        self.lm_head: nn.Module = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        self.compute_dtype = torch.bfloat16  # set by the loader
        self.cache_dtype: torch.dtype | None = None
        self.argmax: Callable[[torch.Tensor], list[int]] = finite_argmax
        self.top_k: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]] = _torch_top_k
        self._rope_cache: dict[bool, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def kv_dtype(self) -> torch.dtype:
        return self.cache_dtype or self.compute_dtype

    @property
    def takes_rows(self) -> bool:
        return True

    def rope_tables(self, sliding: bool, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for positions [0, length) of a kind of layer: [length, D], float32. A
        "proportional" rotary rotates the first fraction of the frequencies; the others are 0
        (cos 1, sin 0: those dimensions pass unrotated)."""
        cached = self._rope_cache.get(sliding)
        if cached is None or cached[0].shape[0] < length:
            c = self.config
            size = max(length, 4096 if cached is None else 2 * cached[0].shape[0])
            _, dim = c.kv_shape(sliding)
            theta = c.rope_theta_local if sliding else c.rope_theta_global
            fraction = c.rotary_fraction_local if sliding else c.rotary_fraction_global
            factor = c.rope_scaling_local if sliding else c.rope_scaling_global
            angles = int(fraction * dim // 2)
            exponents = torch.arange(0, 2 * angles, 2, dtype=torch.int64).float() / dim
            inv_freq = torch.cat([1.0 / (theta**exponents), torch.zeros(dim // 2 - angles)])
            inv_freq = inv_freq / factor
            freqs = torch.arange(size).float()[:, None] * inv_freq[None, :]
            emb = torch.cat((freqs, freqs), dim=-1)
            cached = (emb.cos(), emb.sin())
            self._rope_cache[sliding] = cached
        return cached

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, S]
        positions: torch.Tensor,  # [B, S]
        slots: torch.Tensor,  # [B]
        cache: KVCache,
        last_only: bool = True,
        decoding: bool = False,
    ) -> torch.Tensor:
        """Logits: [B, V] for each sequence's last position (or [B, S, V])."""
        del decoding  # one way for every step
        b, s = input_ids.shape
        wanted = [i * s + s - 1 for i in range(b)] if last_only else list(range(b * s))
        logits = self.forward_rows(
            input_ids.reshape(-1), positions.reshape(-1), slots.repeat_interleave(s), cache, wanted
        )
        return logits if last_only else logits.view(b, s, -1)

    def forward_rows(
        self,
        input_ids: torch.Tensor,  # [R]
        positions: torch.Tensor,  # [R]
        slots: torch.Tensor,  # [R]
        cache: KVCache,
        wanted: list[int],
    ) -> torch.Tensor:
        """Logits [len(wanted), V] of rows of tokens of any sequences, in passes of at most the
        cache's ``chunk`` rows of a sequence (each continues the one before)."""
        x = self.head_inputs(input_ids, positions, slots, cache, wanted)
        logits: torch.Tensor = self.lm_head(x).float()
        softcap = self.config.final_logit_softcapping
        if softcap:  # in place: the same bits, no new [rows, vocabulary] tensors
            logits.div_(softcap).tanh_().mul_(softcap)
        return logits

    def head_inputs(
        self,
        input_ids: torch.Tensor,  # [R]
        positions: torch.Tensor,  # [R]
        slots: torch.Tensor,  # [R]
        cache: KVCache,
        wanted: list[int],
    ) -> torch.Tensor:
        """The output head's inputs (the final norm's outputs) [len(wanted), E] of rows as
        ``forward_rows`` takes them: what a 4-bit head's GPTQ rounding is fitted on."""
        row_slots = slots.tolist()
        last: dict[int, int] = {}
        for slot, position in zip(row_slots, positions.tolist(), strict=True):
            last[slot] = max(last.get(slot, 0), position)
        for slot, position in last.items():
            cache.ensure(slot, position + 1)
        passes = _passes(row_slots, cache.chunk, _ROWS_PER_PASS)
        if len(passes) == 1:
            x = select_rows(self._rows(input_ids, positions, slots, cache), wanted)
        else:
            out: dict[int, torch.Tensor] = {}
            keep = set(wanted)
            for rows in passes:
                index = torch.tensor(rows, dtype=torch.long)
                ids, at, where = (t.index_select(0, index) for t in (input_ids, positions, slots))
                y = self._rows(ids, at, where, cache)
                out.update((row, y[i]) for i, row in enumerate(rows) if row in keep)
            x = torch.stack([out[row] for row in wanted])
        normed: torch.Tensor = self.norm(x)
        return normed

    def _rows(
        self, input_ids: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, cache: KVCache
    ) -> torch.Tensor:
        """Every block on one pass's rows: [R] -> hidden states [R, E]."""
        c, dtype = self.config, self.compute_dtype
        lookup = self.embed_lookup if self.embed_lookup is not None else self.embed
        assert lookup is not None
        x = lookup(input_ids).to(dtype) * torch.tensor(self.embed_scale, dtype=dtype)  # [R, E]
        ple = self._per_layer_inputs(input_ids, x) if c.ple_size else None  # [R, L, P]
        length = int(positions.max()) + 1
        ropes = {}
        for sliding in set(c.sliding_layers):
            cos, sin = self.rope_tables(sliding, length)
            ropes[sliding] = (cos[positions].to(dtype), sin[positions].to(dtype))
        pass_ = _Pass(positions, slots, c.sliding_window)
        for i, block in enumerate(self.blocks):
            assert isinstance(block, Gemma4Block)
            layer_input = ple[:, i] if ple is not None else None
            x = block(x, ropes[block.sliding], layer_input, pass_, cache)
        hidden: torch.Tensor = x
        return hidden

    def _per_layer_inputs(self, input_ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Each layer's input of each row: its token's row of the per-layer table (scaled by
        sqrt(P)) and a projection of its embedding, normalised, averaged (times 1/sqrt(2))."""
        c, dtype = self.config, x.dtype
        shape = (x.shape[0], c.num_layers, c.ple_size)
        tokens = self.ple_embed(input_ids).to(dtype) * torch.tensor(c.ple_size**0.5, dtype=dtype)
        projected = self.ple_projection(x) * torch.tensor(c.hidden_size**-0.5, dtype=dtype)
        projected = self.ple_norm(projected.view(shape))
        combined: torch.Tensor = (projected + tokens.view(shape)) * torch.tensor(
            2.0**-0.5, dtype=dtype
        )
        return combined


class _Q8Rows(nn.Module):
    """Rows of an int8 table (the per-layer inputs' table), de-quantized as they are looked up."""

    def __init__(self, table: Q8Linear) -> None:
        super().__init__()
        table.looked_up_only = True
        self.table = table

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.table.kernels.rows(self.table, ids.reshape(-1))
        return rows.view(*ids.shape, self.table.in_features)


class _Q8Lookup(nn.Module):
    """The tied int8 output head looked up as the embedding table (not a submodule: saved
    once, as ``lm_head``)."""

    def __init__(self, table: Q8Linear) -> None:
        super().__init__()
        self._table = [table]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        table = self._table[0]
        rows = table.kernels.rows(table, ids.reshape(-1))
        return rows.view(*ids.shape, table.in_features)


# -- weights ---------------------------------------------------------------------------------------

# A block's norms (ours, transformers'): every block's; a block computing keys'; with experts;
# with per-layer inputs.
_BLOCK_NORMS = (
    ("input_norm", "input_layernorm"),
    ("post_attention_norm", "post_attention_layernorm"),
    ("pre_feedforward_norm", "pre_feedforward_layernorm"),
    ("post_feedforward_norm", "post_feedforward_layernorm"),
    ("q_norm", "self_attn.q_norm"),
)
_KEY_NORMS = (("k_norm", "self_attn.k_norm"),)
_EXPERT_NORMS = (
    ("post_feedforward_norm_1", "post_feedforward_layernorm_1"),
    ("pre_feedforward_norm_2", "pre_feedforward_layernorm_2"),
    ("post_feedforward_norm_2", "post_feedforward_layernorm_2"),
)
_PLE_NORMS = (("ple_post_norm", "post_per_layer_input_norm"),)


# A lean weight's part: a checkpoint tensor by transformers' name, or (name, j): the j-th slice
# of its first dimension (one expert of the stacked experts).
Part = str | tuple[str, int]


def gemma4_weight_sources(config: Gemma4Config, *, tied: bool) -> dict[str, tuple[Part, ...]]:
    """Each weight and buffer of ``Gemma4Model`` (float, by its state dict's names) and the
    checkpoint tensors it is made of (transformers' names, without prefix), concatenated along
    their first dimension: the embedding, the per-layer inputs' tables, block by block, the
    final norm, the head (``lm_head.weight`` only when untied: else the embedding is the head).
    What every loader reads: all at once (``load_gemma4_state_dict``) or a tensor at a time
    (``conversion.convert_streamed``)."""
    sources: dict[str, tuple[Part, ...]] = {"embed.weight": ("embed_tokens.weight",)}
    if config.ple_size:
        sources["ple_embed.weight"] = ("embed_tokens_per_layer.weight",)
        sources["ple_projection.weight"] = ("per_layer_model_projection.weight",)
        sources["ple_norm.weight"] = ("per_layer_projection_norm.weight",)
    sliding, kv_sources = config.sliding_layers, config.kv_sources
    for i in range(config.num_layers):
        src, dst = f"layers.{i}.", f"blocks.{i}."
        attn = src + "self_attn."
        projections: tuple[Part, ...] = (attn + "q_proj.weight",)
        shared = kv_sources[i] != i
        if not shared:
            projections += (attn + "k_proj.weight",)
            if not (config.attention_k_eq_v and not sliding[i]):
                projections += (attn + "v_proj.weight",)
        sources[dst + "qkv.weight"] = projections
        sources[dst + "o.weight"] = (attn + "o_proj.weight",)
        sources[dst + "gate_up.weight"] = (src + "mlp.gate_proj.weight", src + "mlp.up_proj.weight")
        sources[dst + "down.weight"] = (src + "mlp.down_proj.weight",)
        sources[dst + "layer_scalar"] = (src + "layer_scalar",)
        norms = _BLOCK_NORMS + (() if shared else _KEY_NORMS)
        if config.num_experts:
            norms += _EXPERT_NORMS
        if config.ple_size:
            norms += _PLE_NORMS
        for ours, theirs in norms:
            sources[f"{dst}{ours}.weight"] = (f"{src}{theirs}.weight",)
        if config.ple_size:
            sources[dst + "ple_gate.weight"] = (src + "per_layer_input_gate.weight",)
            sources[dst + "ple_projection.weight"] = (src + "per_layer_projection.weight",)
        if config.num_experts:
            sources[dst + "router.weight"] = (src + "router.proj.weight",)
            sources[dst + "router_scale"] = (src + "router.scale",)
            sources[dst + "per_expert_scale"] = (src + "router.per_expert_scale",)
            for j in range(config.num_experts):
                sources[f"{dst}experts.{j}.gate_up.weight"] = ((src + "experts.gate_up_proj", j),)
                sources[f"{dst}experts.{j}.down.weight"] = ((src + "experts.down_proj", j),)
    sources["norm.weight"] = ("norm.weight",)
    if not tied:
        sources["lm_head.weight"] = ("lm_head.weight",)
    return sources


def load_gemma4_state_dict(
    config: Gemma4Config, state: Mapping[str, torch.Tensor], dtype: torch.dtype
) -> Gemma4Model:
    """Build the model from transformers' names (no prefix, as a ``Checkpoint`` gives them),
    every weight in memory at once (conversion reads a tensor at a time: ``conversion.py``)."""
    with torch.device("meta"):
        model = Gemma4Model(config)
    shapes = {name: tensor.shape for name, tensor in model.state_dict().items()}

    def part(source: Part) -> torch.Tensor:
        return state[source] if isinstance(source, str) else state[source[0]][source[1]]

    tensors: dict[str, torch.Tensor] = {}
    for ours, theirs in gemma4_weight_sources(config, tied=True).items():
        parts = [part(p) for p in theirs]
        tensors[ours] = (parts[0] if len(parts) == 1 else torch.cat(parts)).reshape(shapes[ours])
    converted = {
        k: v.to(dtype if _is_matrix(k) else torch.float32).contiguous() for k, v in tensors.items()
    }
    untied = state.get("lm_head.weight")
    if untied is not None:
        converted["lm_head.weight"] = untied.to(dtype).contiguous()
    else:
        converted["lm_head.weight"] = converted["embed.weight"]  # tied: held once
    model.load_state_dict(converted, assign=True, strict=True)
    model.compute_dtype = dtype
    return model.eval()


def _is_matrix(name: str) -> bool:
    """Weights in the compute dtype (as transformers holds them); norms stay float32."""
    return not name.endswith("norm.weight")


# -- int8 / 4-bit ----------------------------------------------------------------------------------


def _quantizable(linear: nn.Module) -> bool:
    """The int8 blocks hold 32 inputs each: a projection with another width stays float."""
    return isinstance(linear, nn.Linear) and linear.in_features % BLOCK == 0


def _projections(model: Gemma4Model) -> list[tuple[nn.Module, str]]:
    """(owner, attribute) of every projection the int8 path quantizes, in a fixed order."""
    found: list[tuple[nn.Module, str]] = []
    if model.config.ple_size:
        found.append((model, "ple_projection"))
    for block in model.blocks:
        for name in ("qkv", "o", "gate_up", "down", "ple_gate", "ple_projection"):
            if hasattr(block, name):
                found.append((block, name))
        for expert in getattr(block, "experts", ()):
            found += [(expert, "gate_up"), (expert, "down")]
    return [(owner, name) for owner, name in found if _quantizable(getattr(owner, name))]


def quantize_gemma4(
    model: Gemma4Model, kernels: Q8Kernels, *, tied: bool, bits: BlockBits = _INT8
) -> None:
    """Replace the projections (those 32 inputs wide) by int8 or 4-bit ones, the per-layer
    inputs' table by int8 rows, the head by ``bits.head``; activations become float32."""

    def quantized(weight: torch.Tensor, width: int) -> Q8Linear:
        cls = Q4Linear if width == 4 else Q8Linear
        return cls.from_weight(kernels, weight.float())

    for owner, name in _projections(model):
        setattr(owner, name, quantized(getattr(owner, name).weight, bits.blocks))
    if model.config.ple_size:
        table: torch.Tensor = model.ple_embed.weight  # type: ignore[assignment]
        model.ple_embed = _Q8Rows(Q8Linear.from_weight(kernels, table.float()))
    head: torch.Tensor = model.lm_head.weight  # type: ignore[assignment]
    _install(model, kernels, quantized(head, bits.head), tied=tied)


def empty_quantized_gemma4(
    model: Gemma4Model,
    kernels: Q8Kernels,
    *,
    tied: bool,
    bits: BlockBits = _INT8,
    huge_pages: bool = True,
) -> None:
    """Give a meta-device model the int8/4-bit projections ``quantize_gemma4`` makes, to load
    a state dict into (``huge_pages``: moved into 2 MB pages once loaded)."""

    def empty(out_features: int, in_features: int, width: int) -> Q8Linear:
        groups = 8 if width == 8 else 4
        tiles, blocks = -(-out_features // LANES), in_features // BLOCK
        packed = (
            torch.empty((tiles, blocks, groups, LANES, 4), dtype=torch.uint8, device="meta"),
            torch.empty((tiles, blocks, LANES), dtype=torch.float16, device="meta"),
            torch.empty(1, device="meta"),
        )
        return (Q4Linear if width == 4 else Q8Linear)(kernels, packed, out_features)

    for owner, name in _projections(model):
        linear = getattr(owner, name)
        setattr(owner, name, empty(linear.out_features, linear.in_features, bits.blocks))
    c = model.config
    if c.ple_size:
        model.ple_embed = _Q8Rows(empty(c.ple_vocab_size, c.num_layers * c.ple_size, 8))
    head = empty(c.vocab_size, c.hidden_size, bits.head)
    _install(model, kernels, head, tied=tied, huge_pages=huge_pages)


def _install(
    model: Gemma4Model, kernels: Q8Kernels, head: Q8Linear, *, tied: bool, huge_pages: bool = True
) -> None:
    model.lm_head = head
    if tied:
        model.embed_lookup = _Q8Lookup(head)
        model.embed = None
    model.compute_dtype = torch.float32
    model.cache_dtype = torch.float16
    if huge_pages:
        hold_in_huge_pages_once_loaded(model)
    model.argmax = kernels.argmax
    model.top_k = kernels.top_k
