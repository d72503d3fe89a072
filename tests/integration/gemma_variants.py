"""Tiny random Gemma 3 checkpoints of every shape the engine meets, built from transformers' own
config classes, saved as safetensors and written as GGUF the way llama.cpp writes them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

VOCAB = 512

# Each variant stands for real sizes: what differs between them is what differs in the configs.
VARIANTS: dict[str, dict[str, Any]] = {
    # 1B: no rotary scaling, head size = attention scale
    "1b": {"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32},
    # 4B/12B: global layers' rotary positions scaled linearly by 8, head size != hidden / heads
    "4b": {
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "rope_parameters": {
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        },
    },
    # 27B: attention scaled by hidden / heads (query_pre_attn_scalar), not by the head size
    "27b": {
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "query_pre_attn_scalar": 48,
        "rope_parameters": {
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        },
    },
}


def text_config(variant: str, vocab: int = VOCAB) -> Any:
    from transformers import Gemma3TextConfig

    extra = dict(VARIANTS[variant])
    extra.setdefault("query_pre_attn_scalar", extra["head_dim"])
    return Gemma3TextConfig(
        vocab_size=vocab,
        hidden_size=96,
        intermediate_size=192,
        num_hidden_layers=6,  # the sixth global, as in every Gemma 3
        sliding_window=16,  # exceeded within the 64 steps
        max_position_embeddings=1024,
        initializer_range=0.2,  # peaked next-token distributions, as a trained model's
        tie_word_embeddings=True,
        **extra,
    )


def build_text_model(variant: str, seed: int = 0) -> Any:
    from transformers import Gemma3ForCausalLM

    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(text_config(variant)).eval()
    _randomize_norms(model)
    return model


def build_multimodal_model(variant: str, seed: int = 0, vocab: int = VOCAB) -> Any:
    """The multimodal checkpoint (4B+), a tiny vision tower beside the text model."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, SiglipVisionConfig

    torch.manual_seed(seed)
    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
    )
    config = Gemma3Config(
        text_config=text_config(variant, vocab).to_dict(),
        vision_config=vision.to_dict(),
        mm_tokens_per_image=4,
        image_token_index=vocab - 1,
        boi_token_index=vocab - 2,
        eoi_token_index=vocab - 3,
    )
    model = Gemma3ForConditionalGeneration(config).eval()
    _randomize_norms(model)
    return model


def _randomize_norms(model: Any) -> None:
    # Gemma initialises RMSNorm weights to zero: random ones catch a misplaced norm or its +1.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.normal_(0.0, 0.3)


# transformers' names (no prefix) -> llama.cpp's
_GGUF = {
    "embed_tokens.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def write_gguf(model: Any, path: Path, quant: str, *, chat_template: str | None = None) -> Path:
    """The text model as llama.cpp's converter writes it: norms stored as 1 + w in float32, the
    matrices in ``quant`` (F16, BF16, Q8_0 or Q4_0), the hyperparameters as metadata."""
    import gguf

    config = model.config
    qtype = gguf.GGMLQuantizationType[quant]
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_sliding_window(config.sliding_window)
    full = config.rope_parameters["full_attention"]
    writer.add_rope_freq_base(full["rope_theta"])
    if full.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(full["factor"])
    writer.add_eos_token_id(1)
    writer.add_eot_token_id(106)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    for name, tensor in model.state_dict().items():
        name = name.removeprefix("model.")
        if name.startswith("lm_head"):
            continue  # tied
        layer = None
        if name.startswith("layers."):
            _, index, name = name.split(".", 2)
            layer = int(index)
        theirs = _GGUF[name] if layer is None else f"blk.{layer}.{_GGUF[name]}"
        values = tensor.float().numpy()
        if name.endswith("norm.weight"):
            writer.add_tensor(theirs, values + 1.0)
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(theirs, values.astype(np.float16))
        else:
            data = gguf.quants.quantize(values, qtype)
            writer.add_tensor(theirs, data, raw_shape=data.shape, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
