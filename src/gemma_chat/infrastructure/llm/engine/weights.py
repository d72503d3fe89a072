"""Weights of transformers' Gemma 3 checkpoints mapped onto the lean model."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from gemma_chat.infrastructure.llm.engine.config import Gemma3Config
from gemma_chat.infrastructure.llm.engine.model import Gemma3Model

__all__ = ["load_hf_state_dict"]

_PREFIXES = ("model.language_model.", "model.", "")


def load_hf_state_dict(
    config: Gemma3Config, state: Mapping[str, torch.Tensor], dtype: torch.dtype
) -> Gemma3Model:
    """Build the lean model from a ``Gemma3ForCausalLM`` state dict (names as transformers')."""
    prefix = next(p for p in _PREFIXES if f"{p}embed_tokens.weight" in state)

    def get(name: str) -> torch.Tensor:
        return state[prefix + name]

    with torch.device("meta"):
        model = Gemma3Model(config)
    tensors: dict[str, torch.Tensor] = {
        "embed.weight": get("embed_tokens.weight"),
        "norm.weight": get("norm.weight"),
    }
    for i in range(config.num_layers):
        src, dst = f"layers.{i}.", f"blocks.{i}."
        attn = src + "self_attn."
        tensors[dst + "qkv.weight"] = torch.cat(
            [get(attn + "q_proj.weight"), get(attn + "k_proj.weight"), get(attn + "v_proj.weight")]
        )
        tensors[dst + "o.weight"] = get(attn + "o_proj.weight")
        tensors[dst + "gate_up.weight"] = torch.cat(
            [get(src + "mlp.gate_proj.weight"), get(src + "mlp.up_proj.weight")]
        )
        tensors[dst + "down.weight"] = get(src + "mlp.down_proj.weight")
        tensors[dst + "q_norm.weight"] = get(attn + "q_norm.weight")
        tensors[dst + "k_norm.weight"] = get(attn + "k_norm.weight")
        for ours, theirs in (
            ("input_norm", "input_layernorm"),
            ("post_attention_norm", "post_attention_layernorm"),
            ("pre_feedforward_norm", "pre_feedforward_layernorm"),
            ("post_feedforward_norm", "post_feedforward_layernorm"),
        ):
            tensors[f"{dst}{ours}.weight"] = get(f"{src}{theirs}.weight")
    # Norm weights stay float32: they are tiny and RMSNorm computes in float32.
    converted = {
        k: v.to(torch.float32 if k.endswith("norm.weight") else dtype).contiguous()
        for k, v in tensors.items()
    }
    untied = state.get("lm_head.weight")
    if untied is not None and untied.data_ptr() != tensors["embed.weight"].data_ptr():
        converted["lm_head.weight"] = untied.to(dtype).contiguous()
    else:
        converted["lm_head.weight"] = converted["embed.weight"]  # tied: one tensor, held once
    model.load_state_dict(converted, assign=True, strict=True)
    model.compute_dtype = dtype
    return model.eval()
