"""The peak memory of converting a Gemma 4 a piece of a weight at a time (DEVELOPMENT.md,
"Conversion, tensor by tensor"), against the estimate's (``memory._estimate_gemma4``).

Builds once a random Gemma 4 checkpoint (bfloat16 safetensors) whose per-layer table and
embedding are larger than ``conversion.WEIGHTS_AT_A_TIME``, so they are read in pieces; then
converts it in this process to one format, sampling the anonymous memory (RssAnon: what the
conversion allocated, not the checkpoint's pages mapped from disk) every half millisecond.

Run: PYTHONPATH=src python scripts/gemma4_conversion_memory.py /tmp/g4-ckpt q8
(formats: q8, q4, q4-gptq, bfloat16; run each in a fresh process). ``q4-gptq`` rounds the tied
head by GPTQ (``conversion._gptq_rows``), on the statistics of random inputs (their values do
not change the memory): the int8 model the store runs for them first is not part of this peak.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from gemma_chat.infrastructure.llm.engine.checkpoint import SafetensorsCheckpoint
from gemma_chat.infrastructure.llm.engine.config import text_config_from_hf
from gemma_chat.infrastructure.llm.engine.conversion import convert_streamed, largest_read
from gemma_chat.infrastructure.llm.engine.memory import estimate_memory
from gemma_chat.infrastructure.llm.engine.q8 import BlockBits, load_kernels
from gemma_chat.infrastructure.llm.engine.text_models import weight_sources


def build(directory: Path) -> None:
    from transformers import Gemma4ForCausalLM, Gemma4TextConfig

    config = Gemma4TextConfig(
        vocab_size=65_536,
        hidden_size=512,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        global_head_dim=128,
        hidden_size_per_layer_input=256,
        vocab_size_per_layer_input=65_536,
        tie_word_embeddings=True,
    )
    Gemma4ForCausalLM(config).to(torch.bfloat16).save_pretrained(directory)


def anonymous_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise RuntimeError("no RssAnon in /proc/self/status")


def main() -> None:
    directory, name = Path(sys.argv[1]), sys.argv[2]
    if not (directory / "config.json").is_file():
        build(directory)
    checkpoint = SafetensorsCheckpoint(directory)
    config = text_config_from_hf(checkpoint.config)
    kernels = load_kernels(Path(tempfile.gettempdir()) / "gemma4-conversion-memory-kernels")
    formats = {
        "q8": (torch.float32, kernels, BlockBits()),
        "q4": (torch.float32, kernels, BlockBits(head=4, blocks=8, lookup=8)),
        "q4-gptq": (torch.float32, kernels, BlockBits(head=4, blocks=8, lookup=8)),
        "bfloat16": (torch.bfloat16, None, BlockBits()),
    }
    dtype, chosen, bits = formats[name]
    statistics = None
    if name == "q4-gptq":
        x = torch.randn(4096, config.hidden_size, dtype=torch.float64)
        statistics = (x.T @ x / x.shape[0], (x * x).mean(dim=0).float())
        del x
    peak, done = [0], threading.Event()
    base = anonymous_kib()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], anonymous_kib())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    with tempfile.TemporaryDirectory() as out:
        convert_streamed(
            checkpoint,
            weight_sources(config, tied=True),
            config,
            Path(out) / "weights.safetensors",
            dtype=dtype,
            kernels=chosen,
            bits=bits,
            tied=True,
            head_statistics=statistics,
        )
    done.set()
    sampler.join()
    estimate = estimate_memory(
        config,
        quantized=chosen is not None,
        dtype=dtype,
        tied=True,
        head_bits=bits.head if chosen is not None else 8,
    )
    read = largest_read(config)
    measured = (peak[0] - base) * 1024
    print(
        f"{name}: largest piece read {read} weights; anonymous peak +{measured / 2**20:.0f} MiB "
        f"({measured / read:.1f} bytes a weight); estimate {estimate.converting_bytes / 2**20:.0f}"
        " MiB"
    )


if __name__ == "__main__":
    main()
