"""The peak memory of converting a checkpoint into the engine's format (DEVELOPMENT.md,
"Conversion, tensor by tensor").

Builds once a random checkpoint of a real size's shape (safetensors, bfloat16, as Google
publishes them; a tiny tokenizer beside it: conversion only needs one), then converts it in a
fresh process per weight format and reports that process's peak resident memory (VmHWM, which
counts the checkpoint's pages mapped from disk) and its peak anonymous memory (RssAnon,
sampled: what the conversion itself allocated), converting and then reading the converted
model back as a first load does.

Run: PYTHONPATH=src python benchmarks/conversion_memory.py --size 1b --formats q8 q4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import cpu_flags

SIZES = {
    "270m": dict(
        hidden_size=640,
        intermediate_size=2048,
        num_hidden_layers=18,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
    ),
    "1b": dict(
        hidden_size=1152,
        intermediate_size=6912,
        num_hidden_layers=26,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
    ),
}

# Converts the checkpoint in a process of its own, sampling its anonymous memory meanwhile.
CONVERTER = """
import json, sys, threading, time
from pathlib import Path

import torch

from gemma_chat.infrastructure.llm.engine.converted_store import ConvertedModelStore, WeightFormat
from gemma_chat.infrastructure.llm.engine.q8 import load_kernels
from gemma_chat.infrastructure.llm.loading.model_source import resolve_model_source

def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0

checkpoint, cache, kind = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
kernels = load_kernels(Path.home() / ".cache" / "gemma-chat")
weights = {
    "q8": lambda: WeightFormat.q8(kernels),
    "q4": lambda: WeightFormat.q4(kernels),
    "bfloat16": lambda: WeightFormat.floating(torch.bfloat16),
}[kind]()
peak = [0]
done = threading.Event()

def sample():
    while not done.is_set():
        peak[0] = max(peak[0], status("RssAnon"))
        time.sleep(0.005)

threading.Thread(target=sample, daemon=True).start()
store = ConvertedModelStore(cache)
source = resolve_model_source(str(checkpoint))
directory = cache / "models" / "entry"
start = status("VmHWM"), status("RssAnon")
began = time.perf_counter()
store.convert(source, weights, directory, progress=False)
seconds = time.perf_counter() - began
converting = max(peak[0], status("RssAnon"))
store.load(directory, weights)  # the first load reads the converted model back
done.set()
weights_bytes = (directory / "weights.safetensors").stat().st_size
print(json.dumps({
    "format": kind,
    "peak_rss_mb": round(status("VmHWM") / 2**20),
    "peak_anon_mb": round(converting / 2**20),
    "first_load_anon_mb": round(max(peak[0], status("RssAnon")) / 2**20),
    "before_anon_mb": round(start[1] / 2**20),
    "weights_file_mb": round(weights_bytes / 2**20),
    "seconds": round(seconds, 1),
}))
"""


def build_checkpoint(size: str, directory: Path) -> Path:
    """A random checkpoint of ``size``'s shape (its layers, widths and vocabulary)."""
    import torch
    from safetensors.torch import save_file
    from transformers import Gemma3TextConfig

    from gemma_chat.testing.tiny_gemma import build_tiny_gemma

    if (directory / "model.safetensors").is_file():
        return directory
    build_tiny_gemma(directory)  # the tokenizer (and a tiny config, replaced below)
    for stale in directory.glob("*.safetensors"):
        stale.unlink()
    config = Gemma3TextConfig(vocab_size=262_144, tie_word_embeddings=True, **SIZES[size])
    c = config
    generator = torch.Generator().manual_seed(0)

    def matrix(rows: int, columns: int) -> torch.Tensor:
        return (torch.randn((rows, columns), generator=generator) * 0.02).to(torch.bfloat16)

    def norm(width: int) -> torch.Tensor:
        return (torch.randn(width, generator=generator) * 0.1).to(torch.bfloat16)

    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    state = {"model.embed_tokens.weight": matrix(c.vocab_size, c.hidden_size)}
    state["model.norm.weight"] = norm(c.hidden_size)
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        state[p + "self_attn.q_proj.weight"] = matrix(q, c.hidden_size)
        state[p + "self_attn.k_proj.weight"] = matrix(kv, c.hidden_size)
        state[p + "self_attn.v_proj.weight"] = matrix(kv, c.hidden_size)
        state[p + "self_attn.o_proj.weight"] = matrix(c.hidden_size, q)
        state[p + "self_attn.q_norm.weight"] = norm(c.head_dim)
        state[p + "self_attn.k_norm.weight"] = norm(c.head_dim)
        state[p + "mlp.gate_proj.weight"] = matrix(c.intermediate_size, c.hidden_size)
        state[p + "mlp.up_proj.weight"] = matrix(c.intermediate_size, c.hidden_size)
        state[p + "mlp.down_proj.weight"] = matrix(c.hidden_size, c.intermediate_size)
        for name in (
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
        ):
            state[f"{p}{name}.weight"] = norm(c.hidden_size)
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    raw = config.to_dict()
    raw["architectures"] = ["Gemma3ForCausalLM"]
    raw["torch_dtype"] = "bfloat16"
    (directory / "config.json").write_text(json.dumps(raw, indent=1))
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=list(SIZES), default="1b")
    parser.add_argument("--formats", nargs="+", default=["q8", "q4", "bfloat16"])
    parser.add_argument("--checkpoint-dir", type=Path, default=None)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    root = args.checkpoint_dir or Path(tempfile.gettempdir()) / f"gemma3-{args.size}-random"
    checkpoint = build_checkpoint(args.size, root)
    print(f"{cpu_flags()}; Gemma 3 {args.size} shape {args.label}", flush=True)
    print(
        "| format | converting: peak anonymous | first load: peak anonymous | peak RSS "
        "| weights file | seconds converting |"
    )
    print("|---|---|---|---|---|---|")
    for kind in args.formats:
        with tempfile.TemporaryDirectory() as cache:
            out = subprocess.run(
                [sys.executable, "-c", CONVERTER, str(checkpoint), cache, kind],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(
            f"| {kind} | {r['peak_anon_mb']} MiB | {r['first_load_anon_mb']} MiB "
            f"| {r['peak_rss_mb']} MiB | {r['weights_file_mb']} MiB | {r['seconds']} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
