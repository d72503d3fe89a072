"""The lean Gemma 3 model's hyperparameters, read from a transformers ``config.json``."""

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
        global_theta = (rope.get("full_attention") or {}).get(
            "rope_theta", config.get("rope_theta", 1_000_000.0)
        )
        local_theta = (rope.get("sliding_attention") or {}).get(
            "rope_theta", config.get("rope_local_base_freq", 10_000.0)
        )
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
        )
