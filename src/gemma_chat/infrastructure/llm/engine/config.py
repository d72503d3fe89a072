"""The lean Gemma 3 model's hyperparameters, read from a transformers ``config.json``.

Every Gemma 3 size is this one model with other numbers: 1B has no rotary scaling; 4B, 12B and
27B scale their global layers' rotary positions linearly (factor 8); 27B's attention scale comes
from ``query_pre_attn_scalar`` (168), not from its head size (128).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Gemma3Config"]


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
