"""The memory each Gemma 3 and Gemma 4 size takes on the native engine, computed from its
config (README).

Run: PYTHONPATH=src python scripts/gemma_memory.py
"""

from __future__ import annotations

import torch

from gemma_chat.infrastructure.llm.engine.architecture import complete_text_config
from gemma_chat.infrastructure.llm.engine.config import text_config_from_hf
from gemma_chat.infrastructure.llm.engine.memory import estimate_memory

# The text models' configs as Google publishes them (config.json / text_config): what sets the
# memory (widths, layers, heads, vocabulary, sliding window).
COLUMNS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "sliding_window",
)
SIZES = (
    ("Gemma 3 270M", 640, 2048, 18, 4, 1, 256, 262_144, 512),
    ("Gemma 3 1B", 1152, 6912, 26, 4, 1, 256, 262_144, 512),
    ("Gemma 3 4B", 2560, 10240, 34, 8, 4, 256, 262_208, 1024),
    ("Gemma 3 12B", 3840, 15360, 48, 16, 8, 256, 262_208, 1024),
    ("Gemma 3 27B", 5376, 21504, 62, 32, 16, 128, 262_208, 1024),
)
# Gemma 4's text configs (text_config of the released config.json), as transcribed in
# VincentGourbin/gemma-4-swift-mlx, Tests/Gemma4SwiftTests/ConfigurationTests.swift (E2B, E4B,
# 26B-A4B, 31B); the same values appear in other public code (the 26B-A4B's two global
# key/value heads: transformers' models/gemma4/configuration_gemma4.py). Layers: every
# ``pattern``-th is global, the others slide (E2B: 4 + 1; the others: 5 + 1).
_GEMMA4_COMMON = {
    "model_type": "gemma4_text",
    "head_dim": 256,
    "global_head_dim": 512,
    "vocab_size": 262_144,
    "final_logit_softcapping": 30.0,
    "tie_word_embeddings": True,
    "rope_parameters": {
        "full_attention": {
            "rope_type": "proportional",
            "partial_rotary_factor": 0.25,
            "rope_theta": 1e6,
        },
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
    },
}
GEMMA4_SIZES: tuple[tuple[str, int, dict[str, object]], ...] = (
    (
        "Gemma 4 E2B",
        5,
        {
            "hidden_size": 1536,
            "intermediate_size": 6144,
            "num_hidden_layers": 35,
            "num_attention_heads": 8,
            "num_key_value_heads": 1,
            "sliding_window": 512,
            "hidden_size_per_layer_input": 256,
            "vocab_size_per_layer_input": 262_144,
            "num_kv_shared_layers": 20,
            "use_double_wide_mlp": True,
        },
    ),
    (
        "Gemma 4 E4B",
        6,
        {
            "hidden_size": 2560,
            "intermediate_size": 10240,
            "num_hidden_layers": 42,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "sliding_window": 512,
            "hidden_size_per_layer_input": 256,
            "vocab_size_per_layer_input": 262_144,
            "num_kv_shared_layers": 18,
        },
    ),
    (
        "Gemma 4 26B-A4B",
        6,
        {
            "hidden_size": 2816,
            "intermediate_size": 2112,
            "num_hidden_layers": 30,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "num_global_key_value_heads": 2,
            "sliding_window": 1024,
            "attention_k_eq_v": True,
            "enable_moe_block": True,
            "num_experts": 128,
            "top_k_experts": 8,
            "moe_intermediate_size": 704,
            "hidden_size_per_layer_input": 0,
        },
    ),
    (
        "Gemma 4 31B",
        6,
        {
            "hidden_size": 5376,
            "intermediate_size": 21504,
            "num_hidden_layers": 60,
            "num_attention_heads": 32,
            "num_key_value_heads": 16,
            "num_global_key_value_heads": 4,
            "sliding_window": 1024,
            "attention_k_eq_v": True,
            "hidden_size_per_layer_input": 0,
        },
    ),
)
CONTEXTS = (4096, 32_768)  # a conversation's keys and values at these lengths


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def main() -> None:
    heads = " | ".join(f"KV cache at {n // 1024}k tokens" for n in CONTEXTS)
    print(
        "| model | parameters | int8 weights | int8 + 4-bit head | bfloat16 weights "
        f"| {heads} | first load (int8) |"
    )
    print("|---|---|---|---|---|" + "---|" * len(CONTEXTS) + "---|")
    configs: list[tuple[str, dict[str, object]]] = [
        (name, {"model_type": "gemma3_text", **dict(zip(COLUMNS, values, strict=True))})
        for name, *values in SIZES
    ]
    for name, pattern, fields in GEMMA4_SIZES:
        layers = int(str(fields["num_hidden_layers"]))
        kinds = [
            "full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
            for i in range(layers)
        ]
        configs.append((name, {**_GEMMA4_COMMON, **fields, "layer_types": kinds}))
    for name, fields in configs:
        config = text_config_from_hf(complete_text_config(fields))
        q8 = estimate_memory(config, quantized=True, dtype=torch.float32, tied=True)
        q4 = estimate_memory(  # int4: the 4-bit head and the lookups' own int8 table
            config, quantized=True, dtype=torch.float32, tied=True, head_bits=4, lookup_bits=8
        )
        bf16 = estimate_memory(config, quantized=False, dtype=torch.bfloat16, tied=True)
        kv = " | ".join(gib(q8.kv_bytes(n)) for n in CONTEXTS)
        print(
            f"| {name} | {q8.parameters / 1e9:.2f} B | {gib(q8.weights_bytes)} "
            f"| {gib(q4.weights_bytes)} | {gib(bf16.weights_bytes)} | {kv} "
            f"| {gib(q8.conversion_bytes)} |"
        )


if __name__ == "__main__":
    main()
