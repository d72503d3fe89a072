"""The engine's models' hyperparameters, read from a transformers ``config.json``: Gemma 3's
(``Gemma3Config``) and Gemma 4's (``Gemma4Config``); ``text_config_from_hf`` picks by model type.

Every Gemma 3 size is this one model with other numbers: 1B has no rotary scaling; 4B, 12B and
27B scale their global layers' rotary positions linearly (factor 8); 27B's attention scale comes
from ``query_pre_attn_scalar`` (168), not from its head size (128).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Gemma3Config", "Gemma4Config", "TextConfig", "text_config_from_hf"]


@dataclass(frozen=True, slots=True)
class Gemma3Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    sliding_window: int
    sliding_layers: tuple[bool, ...]  # per layer: sliding-window (local) attention?
    rope_theta_global: float
    rope_theta_local: float
    query_pre_attn_scalar: float
    max_position_embeddings: int
    final_logit_softcapping: float | None = None
    # Linear rotary scaling (positions divided by the factor), per kind of layer.
    rope_scaling_global: float = 1.0
    rope_scaling_local: float = 1.0
    eos_token_ids: tuple[int, ...] = ()  # the config's end-of-sequence / end-of-turn ids

    @property
    def kv_sources(self) -> tuple[int, ...]:
        """Per layer, the layer whose keys and values it attends to: its own."""
        return tuple(range(self.num_layers))

    def kv_shape(self, sliding: bool) -> tuple[int, int]:
        """(key/value heads, head size) of a kind of layer: the same for both."""
        return self.num_kv_heads, self.head_dim

    def weight_counts(self, *, tied: bool) -> tuple[int, int]:
        """(weights of the matrices, float32 weights: norms), as the engine holds them."""
        q, kv, e = (
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
            self.hidden_size,
        )
        per_layer = e * (q + 2 * kv) + q * e + 3 * e * self.intermediate_size
        matrices = self.num_layers * per_layer + self.vocab_size * e * (1 if tied else 2)
        return matrices, self.num_layers * (4 * e + 2 * self.head_dim) + e

    def kv_values_per_token(self) -> int:
        """Keys and values a token adds to the cache, over every layer."""
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim

    @classmethod
    def from_hf(cls, config: dict[str, Any]) -> Gemma3Config:
        """From a transformers ``Gemma3TextConfig`` as a dict (``config.json``)."""
        layers = int(config["num_hidden_layers"])
        layer_types = config.get("layer_types") or [
            (
                "full_attention"
                if (i + 1) % config.get("sliding_window_pattern", 6) == 0
                else "sliding_attention"
            )
            for i in range(layers)
        ]
        rope = config.get("rope_parameters") or {}
        global_rope = rope.get("full_attention") or config.get("rope_scaling") or {}
        local_rope = rope.get("sliding_attention") or {}
        global_theta = global_rope.get("rope_theta", config.get("rope_theta", 1_000_000.0))
        local_theta = local_rope.get("rope_theta", config.get("rope_local_base_freq", 10_000.0))
        eos = config.get("eos_token_id")
        eos_ids = eos if isinstance(eos, list) else [] if eos is None else [eos]
        return cls(
            vocab_size=int(config["vocab_size"]),
            hidden_size=int(config["hidden_size"]),
            intermediate_size=int(config["intermediate_size"]),
            num_layers=layers,
            num_heads=int(config["num_attention_heads"]),
            num_kv_heads=int(config["num_key_value_heads"]),
            head_dim=int(config["head_dim"]),
            rms_norm_eps=float(config["rms_norm_eps"]),
            sliding_window=int(config["sliding_window"]),
            sliding_layers=tuple(t == "sliding_attention" for t in layer_types),
            rope_theta_global=float(global_theta),
            rope_theta_local=float(local_theta),
            query_pre_attn_scalar=float(config["query_pre_attn_scalar"]),
            max_position_embeddings=int(config["max_position_embeddings"]),
            final_logit_softcapping=config.get("final_logit_softcapping"),
            rope_scaling_global=_linear_factor(global_rope),
            rope_scaling_local=_linear_factor(local_rope),
            eos_token_ids=tuple(int(i) for i in eos_ids),
        )


def _linear_factor(rope: dict[str, Any]) -> float:
    """The factor of linear rotary scaling; any other kind is refused, not approximated."""
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "default":
        return 1.0
    if kind == "linear":
        return float(rope["factor"])
    raise ValueError(f"rotary scaling of type {kind!r} is not implemented by the native engine")


@dataclass(frozen=True, slots=True)
class Gemma4Config:
    """Gemma 4's text model (``Gemma4TextConfig``): Gemma 3's layout plus what varies per layer.

    - Global layers have their own head size (``global_head_dim``) and number of key/value heads,
      and rotate only a fraction of each head ("proportional" rotary: the other frequencies 0).
    - The last ``num_kv_shared_layers`` layers compute no keys or values: each attends to those
      of the last earlier layer of its kind (``kv_source``); with ``use_double_wide_mlp`` their
      MLP is twice as wide.
    - ``attention_k_eq_v``: the global layers' values are their keys' projection (before the
      key norm and rotary); values are normalised without a scale; attention is not scaled (the
      query norm carries it).
    - Per-layer inputs (PLE, ``ple_size`` > 0): a second embedding table gives each layer a small
      vector per token, mixed into the residual after the MLP.
    - MoE (``num_experts`` > 0): beside the dense MLP, ``top_k`` of ``num_experts`` experts per
      token, chosen by a router on the residual.
    - RMSNorm multiplies by ``w`` (Gemma 3's by ``1 + w``); every layer ends with a scalar.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int  # of the sliding layers
    head_dim: int  # of the sliding layers
    num_global_kv_heads: int
    global_head_dim: int
    rms_norm_eps: float
    sliding_window: int
    sliding_layers: tuple[bool, ...]
    rope_theta_global: float
    rope_theta_local: float
    rotary_fraction_global: float  # proportional rotary: the fraction of a head rotated
    rotary_fraction_local: float
    rope_scaling_global: float
    rope_scaling_local: float
    max_position_embeddings: int
    final_logit_softcapping: float | None
    num_kv_shared_layers: int
    attention_k_eq_v: bool
    use_double_wide_mlp: bool
    ple_size: int  # hidden_size_per_layer_input; 0: no per-layer inputs
    ple_vocab_size: int
    num_experts: int  # 0: no MoE block
    top_k_experts: int
    moe_intermediate_size: int
    eos_token_ids: tuple[int, ...] = ()

    @classmethod
    def from_hf(cls, config: dict[str, Any]) -> Gemma4Config:
        """From a complete ``Gemma4TextConfig`` as a dict (``complete_text_config``)."""
        layers = int(config["num_hidden_layers"])
        layer_types = list(config["layer_types"])
        # Keyed by layer, as int or as a zero-padded string ("05" of 35 layers).
        per_layer = {int(k): v for k, v in (config.get("per_layer_config") or {}).items()}
        globals_ = [i for i, t in enumerate(layer_types) if t == "full_attention"]
        overrides = per_layer.get(globals_[0]) or {}
        if any((per_layer.get(i) or {}) != overrides for i in globals_):
            raise ValueError("global layers of different shapes are not implemented")
        if any(per_layer.get(i) for i, t in enumerate(layer_types) if t != "full_attention"):
            raise ValueError("sliding layers of different shapes are not implemented")
        rope = config.get("rope_parameters") or {}
        global_rope = rope.get("full_attention") or {}
        local_rope = rope.get("sliding_attention") or {}
        eos = config.get("eos_token_id")
        eos_ids = eos if isinstance(eos, list) else [] if eos is None else [eos]
        if config.get("use_bidirectional_attention"):
            raise ValueError("bidirectional attention is not implemented by the native engine")
        moe = bool(config.get("enable_moe_block"))
        return cls(
            vocab_size=int(config["vocab_size"]),
            hidden_size=int(config["hidden_size"]),
            intermediate_size=int(config["intermediate_size"]),
            num_layers=layers,
            num_heads=int(config["num_attention_heads"]),
            num_kv_heads=int(config["num_key_value_heads"]),
            head_dim=int(config["head_dim"]),
            num_global_kv_heads=int(
                overrides.get("num_key_value_heads", config["num_key_value_heads"])
            ),
            global_head_dim=int(overrides.get("head_dim", config["head_dim"])),
            rms_norm_eps=float(config["rms_norm_eps"]),
            sliding_window=int(config["sliding_window"]),
            sliding_layers=tuple(t == "sliding_attention" for t in layer_types),
            rope_theta_global=float(global_rope.get("rope_theta", 1_000_000.0)),
            rope_theta_local=float(local_rope.get("rope_theta", 10_000.0)),
            rotary_fraction_global=_rotary_fraction(global_rope),
            rotary_fraction_local=_rotary_fraction(local_rope),
            rope_scaling_global=_scaling_factor(global_rope),
            rope_scaling_local=_scaling_factor(local_rope),
            max_position_embeddings=int(config["max_position_embeddings"]),
            final_logit_softcapping=config.get("final_logit_softcapping"),
            num_kv_shared_layers=int(config.get("num_kv_shared_layers") or 0),
            attention_k_eq_v=bool(config.get("attention_k_eq_v")),
            use_double_wide_mlp=bool(config.get("use_double_wide_mlp")),
            ple_size=int(config.get("hidden_size_per_layer_input") or 0),
            ple_vocab_size=int(config.get("vocab_size_per_layer_input") or config["vocab_size"]),
            num_experts=int(config.get("num_experts") or 0) if moe else 0,
            top_k_experts=int(config.get("top_k_experts") or 0) if moe else 0,
            moe_intermediate_size=int(config.get("moe_intermediate_size") or 0) if moe else 0,
            eos_token_ids=tuple(int(i) for i in eos_ids),
        )

    @property
    def first_shared_layer(self) -> int:
        return self.num_layers - self.num_kv_shared_layers

    @property
    def kv_sources(self) -> tuple[int, ...]:
        """Per layer, the layer whose keys and values it attends to (itself, unless shared: the
        last layer of its kind before the shared ones, as transformers' ``kv_sharing_modes``)."""
        first = self.first_shared_layer
        sources = []
        for i, sliding in enumerate(self.sliding_layers):
            if i < first:
                sources.append(i)
                continue
            earlier = [j for j in range(first) if self.sliding_layers[j] == sliding]
            if not earlier:
                raise ValueError(f"layer {i} shares keys and values no earlier layer computes")
            sources.append(earlier[-1])
        return tuple(sources)

    def kv_shape(self, sliding: bool) -> tuple[int, int]:
        """(key/value heads, head size) of a kind of layer."""
        if sliding:
            return self.num_kv_heads, self.head_dim
        return self.num_global_kv_heads, self.global_head_dim

    def layer_intermediate_size(self, layer: int) -> int:
        wide = self.use_double_wide_mlp and layer >= self.first_shared_layer
        return self.intermediate_size * (2 if wide else 1)

    def weight_counts(self, *, tied: bool) -> tuple[int, int]:
        """(weights in the compute dtype or int8: matrices, routers, scales; float32 weights:
        the norms)."""
        e, sources = self.hidden_size, self.kv_sources
        matrices = self.vocab_size * e * (1 if tied else 2)
        floats = e + (self.ple_size if self.ple_size else 0)
        if self.ple_size:
            matrices += (self.ple_vocab_size + e) * self.num_layers * self.ple_size
        for i, sliding in enumerate(self.sliding_layers):
            heads, dim = self.kv_shape(sliding)
            q, kv = self.num_heads * dim, heads * dim
            shared = sources[i] != i
            kv_outputs = 0 if shared else kv * (1 if self.attention_k_eq_v and not sliding else 2)
            matrices += e * (q + kv_outputs) + q * e + 3 * e * self.layer_intermediate_size(i)
            matrices += 1  # layer_scalar
            floats += 4 * e + dim * (1 if shared else 2)
            if self.ple_size:
                matrices += 2 * e * self.ple_size
                floats += e
            if self.num_experts:  # experts, router and its scales
                matrices += self.num_experts * (3 * e * self.moe_intermediate_size + e + 1) + e
                floats += 3 * e
        return matrices, floats

    def kv_values_per_token(self) -> int:
        """Keys and values a token adds to the cache, over the layers that hold them."""
        sources = self.kv_sources
        total = 0
        for i, sliding in enumerate(self.sliding_layers):
            if sources[i] == i:
                heads, dim = self.kv_shape(sliding)
                total += 2 * heads * dim
        return total


def _rotary_fraction(rope: dict[str, Any]) -> float:
    kind = rope.get("rope_type", "default")
    if kind == "proportional":
        return float(rope.get("partial_rotary_factor", 1.0))
    if kind in ("default", "linear"):
        return 1.0
    raise ValueError(f"rotary embedding of type {kind!r} is not implemented by the native engine")


def _scaling_factor(rope: dict[str, Any]) -> float:
    kind = rope.get("rope_type", "default")
    return 1.0 if kind == "default" else float(rope.get("factor", 1.0))


TextConfig = Gemma3Config | Gemma4Config


def text_config_from_hf(config: dict[str, Any]) -> TextConfig:
    """The engine's config of a complete text config, by its ``model_type``."""
    if config.get("model_type") == "gemma4_text":
        return Gemma4Config.from_hf(config)
    return Gemma3Config.from_hf(config)
