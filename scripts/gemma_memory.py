"""The memory each Gemma 3 size takes on the native engine, computed from its config (README).

Run: PYTHONPATH=src python scripts/gemma_memory.py

Gemma 4 is not listed: the engine's memory estimate covers Gemma 3's layout (memory.py).
"""

from __future__ import annotations

import torch

from gemma_chat.infrastructure.llm.engine.architecture import complete_text_config
from gemma_chat.infrastructure.llm.engine.config import Gemma3Config
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
    for name, *values in SIZES:
        fields = {"model_type": "gemma3_text", **dict(zip(COLUMNS, values, strict=True))}
        config = Gemma3Config.from_hf(complete_text_config(fields))
        q8 = estimate_memory(config, quantized=True, dtype=torch.float32, tied=True)
        q4 = estimate_memory(config, quantized=True, dtype=torch.float32, tied=True, head_bits=4)
        bf16 = estimate_memory(config, quantized=False, dtype=torch.bfloat16, tied=True)
        kv = " | ".join(gib(q8.kv_bytes(n)) for n in CONTEXTS)
        print(
            f"| {name} | {q8.parameters / 1e9:.2f} B | {gib(q8.weights_bytes)} "
            f"| {gib(q4.weights_bytes)} | {gib(bf16.weights_bytes)} | {kv} "
            f"| {gib(q8.conversion_bytes)} |"
        )


if __name__ == "__main__":
    main()
