"""The memory each Gemma 3 size takes on the native engine, computed from its config (README).

Run: PYTHONPATH=src python scripts/gemma_memory.py
"""

from __future__ import annotations

import torch

from gemma_chat.infrastructure.llm.engine.architecture import complete_text_config
from gemma_chat.infrastructure.llm.engine.config import Gemma3Config
from gemma_chat.infrastructure.llm.engine.memory import estimate_memory

# The text models' configs as Google publishes them (config.json / text_config).
SIZES = {
    "Gemma 3 270M": dict(
        hidden_size=640,
        intermediate_size=2048,
        num_hidden_layers=18,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
        vocab_size=262_144,
    ),
    "Gemma 3 1B": dict(
        hidden_size=1152,
        intermediate_size=6912,
        num_hidden_layers=26,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
        vocab_size=262_144,
    ),
    "Gemma 3 4B": dict(
        hidden_size=2560,
        intermediate_size=10240,
        num_hidden_layers=34,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
    ),
    "Gemma 3 12B": dict(
        hidden_size=3840,
        intermediate_size=15360,
        num_hidden_layers=48,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=256,
    ),
    "Gemma 3 27B": dict(
        hidden_size=5376,
        intermediate_size=21504,
        num_hidden_layers=62,
        num_attention_heads=32,
        num_key_value_heads=16,
        head_dim=128,
        query_pre_attn_scalar=168,
    ),
}


def main() -> None:
    print("| model | parameters | int8 weights | bfloat16 weights | KV cache per 1k tokens |")
    print("|---|---|---|---|---|")
    for name, fields in SIZES.items():
        config = Gemma3Config.from_hf(complete_text_config({"model_type": "gemma3_text", **fields}))
        q8 = estimate_memory(config, quantized=True, dtype=torch.float32, tied=True)
        bf16 = estimate_memory(config, quantized=False, dtype=torch.bfloat16, tied=True)
        print(
            f"| {name} | {q8.parameters / 1e9:.2f} B | {q8.weights_bytes / 2**30:.2f} GiB "
            f"| {bf16.weights_bytes / 2**30:.2f} GiB "
            f"| {q8.kv_bytes_per_token * 1024 / 2**20:.0f} MiB |"
        )


if __name__ == "__main__":
    main()
