"""Weights of transformers' Gemma 3 checkpoints mapped onto the lean model.

``lean_weight_sources`` is the mapping alone (which checkpoint tensors make each lean weight);
the loops that read them, all at once (``load_hf_state_dict``) or one at a time
(``conversion.convert_weights``), are apart from it, so that another architecture brings its
own mapping to the same loops.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from gemma_chat.infrastructure.llm.engine.config import Gemma3Config
from gemma_chat.infrastructure.llm.engine.model import Gemma3Model

__all__ = ["lean_weight_sources", "load_hf_state_dict"]

_PREFIXES = ("model.language_model.", "model.", "")
_NORMS = (
    ("input_norm", "input_layernorm"),
    ("post_attention_norm", "post_attention_layernorm"),
    ("pre_feedforward_norm", "pre_feedforward_layernorm"),
    ("post_feedforward_norm", "post_feedforward_layernorm"),
)


def lean_weight_sources(config: Gemma3Config, *, tied: bool) -> dict[str, tuple[str, ...]]:
    """Each weight of the lean model (``Gemma3Model``'s names) and the checkpoint tensors it is
    made of (transformers' names, without prefix), concatenated along their first dimension;
    in the order a conversion reads them: the embedding, block by block, the final norm, the
    head (``lm_head.weight`` only when untied: else the embedding is the head)."""
    sources: dict[str, tuple[str, ...]] = {"embed.weight": ("embed_tokens.weight",)}
    for i in range(config.num_layers):
        src, dst = f"layers.{i}.", f"blocks.{i}."
        attn = src + "self_attn."
        sources[dst + "qkv.weight"] = tuple(attn + f"{p}_proj.weight" for p in "qkv")
        sources[dst + "o.weight"] = (attn + "o_proj.weight",)
        sources[dst + "gate_up.weight"] = (src + "mlp.gate_proj.weight", src + "mlp.up_proj.weight")
        sources[dst + "down.weight"] = (src + "mlp.down_proj.weight",)
        sources[dst + "q_norm.weight"] = (attn + "q_norm.weight",)
        sources[dst + "k_norm.weight"] = (attn + "k_norm.weight",)
        for ours, theirs in _NORMS:
            sources[f"{dst}{ours}.weight"] = (f"{src}{theirs}.weight",)
    sources["norm.weight"] = ("norm.weight",)
    if not tied:
        sources["lm_head.weight"] = ("lm_head.weight",)
    return sources


def load_hf_state_dict(
    config: Gemma3Config, state: Mapping[str, torch.Tensor], dtype: torch.dtype
) -> Gemma3Model:
    """Build the lean model from a ``Gemma3ForCausalLM`` state dict (names as transformers'),
    every weight in memory at once (conversion reads one at a time: ``conversion.py``)."""
    prefix = next(p for p in _PREFIXES if f"{p}embed_tokens.weight" in state)

    def get(name: str) -> torch.Tensor:
        return state[prefix + name]

    with torch.device("meta"):
        model = Gemma3Model(config)
    tensors: dict[str, torch.Tensor] = {}
    for ours, theirs in lean_weight_sources(config, tied=True).items():
        parts = [get(name) for name in theirs]
        tensors[ours] = parts[0] if len(parts) == 1 else torch.cat(parts)
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
