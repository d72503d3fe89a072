"""A checkpoint's text model read without transformers' model classes: its config (as
transformers writes it) and its weights under transformers' names, from a safetensors directory
or a GGUF file.

Weights are read one tensor at a time, when asked for, as float32: a GGUF's quantized blocks
(Q8_0, Q4_0, Q4_K, Q6_K, ...) are de-quantized by the ``gguf`` package. llama.cpp stores Gemma 3's
RMSNorm weights plus one (its norm multiplies by ``w``, transformers' by ``1 + w``; Gemma 4's
multiplies by ``w`` in both): they are given back as transformers has them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gemma_chat.domain.errors import ModelLoadError
from gemma_chat.infrastructure.llm.engine.architecture import (
    Architecture,
    architecture_named,
    complete_text_config,
)

__all__ = [
    "Checkpoint",
    "GGUFCheckpoint",
    "SafetensorsCheckpoint",
    "gguf_architecture",
    "open_checkpoint",
    "read_text_config",
]


class Checkpoint(Mapping[str, torch.Tensor]):
    """Weights named as transformers' text model names them without a prefix
    (``embed_tokens.weight``, ``layers.0.self_attn.q_proj.weight``, ``lm_head.weight`` when
    untied), float32, read on access."""

    architecture: Architecture
    config: dict[str, Any]  # the text model's config, complete
    format: str  # safetensors | gguf
    stored_types: dict[str, int]  # how the weights are stored: type name -> number of tensors

    def shape_of(self, name: str) -> tuple[int, ...]:
        """A tensor's shape, without reading it."""
        raise NotImplementedError

    def read_rows(self, name: str, index: int | None, start: int, stop: int) -> torch.Tensor:
        """Rows ``[start, stop)`` of a tensor (of its ``index``-th slice along the first
        dimension, when given: one expert of a stack), float32, reading only those."""
        raise NotImplementedError


class SafetensorsCheckpoint(Checkpoint):
    def __init__(self, directory: Path) -> None:
        from safetensors import safe_open

        raw = json.loads((directory / "config.json").read_text())
        architecture = architecture_named(raw.get("model_type"))
        if architecture is None:
            raise ModelLoadError(f"{directory}: model_type {raw.get('model_type')!r} is not Gemma")
        self.architecture, self.format = architecture, "safetensors"
        self.config = complete_text_config(raw)
        self._files: dict[str, Any] = {}
        self._where: dict[str, Any] = {}
        self.stored_types = {}
        for path in sorted(directory.glob("*.safetensors")):
            handle: Any = safe_open(str(path), framework="pt")
            for name in handle.keys():  # noqa: SIM118 - a safe_open handle is not a dict
                self._where[name] = handle
                dtype = str(handle.get_slice(name).get_dtype()).lower()
                self.stored_types[dtype] = self.stored_types.get(dtype, 0) + 1
        prefix = next(
            (p for p in architecture.weight_prefixes if f"{p}embed_tokens.weight" in self._where),
            None,
        )
        if prefix is None:
            raise ModelLoadError(f"{directory}: no embed_tokens.weight in its safetensors files")
        self._names = {
            name.removeprefix(prefix): name for name in self._where if name.startswith(prefix)
        }
        if "lm_head.weight" in self._where and prefix:  # the head is outside the text model
            self._names["lm_head.weight"] = "lm_head.weight"

    def __getitem__(self, name: str) -> torch.Tensor:
        stored = self._names[name]
        tensor: torch.Tensor = self._where[stored].get_tensor(stored)
        return tensor.float()

    def shape_of(self, name: str) -> tuple[int, ...]:
        stored = self._names[name]
        return tuple(int(n) for n in self._where[stored].get_slice(stored).get_shape())

    def read_rows(self, name: str, index: int | None, start: int, stop: int) -> torch.Tensor:
        stored = self._names[name]
        part = self._where[stored].get_slice(stored)
        tensor: torch.Tensor = part[start:stop] if index is None else part[index, start:stop]
        return tensor.float()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


# GGUF tensor names (llama.cpp's) -> transformers'; "{i}" is the layer.
_GGUF_NAMES = {
    "token_embd.weight": "embed_tokens.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_q.weight": "layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.attn_q_norm.weight": "layers.{i}.self_attn.q_norm.weight",
    "blk.{i}.attn_k_norm.weight": "layers.{i}.self_attn.k_norm.weight",
    "blk.{i}.attn_norm.weight": "layers.{i}.input_layernorm.weight",
    "blk.{i}.post_attention_norm.weight": "layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_norm.weight": "layers.{i}.pre_feedforward_layernorm.weight",
    "blk.{i}.post_ffw_norm.weight": "layers.{i}.post_feedforward_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "layers.{i}.mlp.down_proj.weight",
    # Gemma 4 (gguf's tensor map for GEMMA4; llama.cpp's converter renames the router's scales)
    "per_layer_token_embd.weight": "embed_tokens_per_layer.weight",
    "per_layer_model_proj.weight": "per_layer_model_projection.weight",
    "per_layer_proj_norm.weight": "per_layer_projection_norm.weight",
    "blk.{i}.pre_ffw_norm_2.weight": "layers.{i}.pre_feedforward_layernorm_2.weight",
    "blk.{i}.post_ffw_norm_1.weight": "layers.{i}.post_feedforward_layernorm_1.weight",
    "blk.{i}.post_ffw_norm_2.weight": "layers.{i}.post_feedforward_layernorm_2.weight",
    "blk.{i}.ffn_gate_inp.weight": "layers.{i}.router.proj.weight",
    "blk.{i}.ffn_gate_inp.scale": "layers.{i}.router.scale",
    "blk.{i}.ffn_down_exps.scale": "layers.{i}.router.per_expert_scale",
    "blk.{i}.ffn_gate_up_exps.weight": "layers.{i}.experts.gate_up_proj",
    "blk.{i}.ffn_down_exps.weight": "layers.{i}.experts.down_proj",
    "blk.{i}.layer_output_scale.weight": "layers.{i}.layer_scalar",
    "blk.{i}.inp_gate.weight": "layers.{i}.per_layer_input_gate.weight",
    "blk.{i}.proj.weight": "layers.{i}.per_layer_projection.weight",
    "blk.{i}.post_norm.weight": "layers.{i}.post_per_layer_input_norm.weight",
}
# Values llama.cpp writes as an array, one per layer, when layers differ (Gemma 4).
_PER_LAYER_KEYS = ("feed_forward_length", "attention.head_count_kv")
# llama.cpp's Gemma 3: every sixth layer global, the others in a sliding window.
_GGUF_SLIDING_PATTERN = 6


# rows of a quantized tensor dequantized at a time: gguf's dequantize holds its float32 output
# twice (its pieces, then their concatenation), for a vocabulary table the largest of them all
_DEQUANTIZED_ROWS = 8192


def gguf_architecture(path: Path) -> str | None:
    from gemma_chat.infrastructure.llm.engine.gguf_file import GGUFFile

    name = GGUFFile(path).value("general.architecture")
    return None if name is None else str(name)


class GGUFCheckpoint(Checkpoint):
    def __init__(self, path: Path) -> None:
        from gemma_chat.infrastructure.llm.engine.gguf_file import GGUFFile

        self._reader = reader = GGUFFile(path)
        arch = str(reader.value("general.architecture"))
        # A GGUF holds the text model only: gemma3 -> gemma3_text.
        architecture = architecture_named(f"{arch}_text") or architecture_named(arch)
        if architecture is None:
            raise ModelLoadError(f"{path}: GGUF architecture {arch!r} is not Gemma")
        self.architecture, self.format = architecture, "gguf"
        self._tensors = {t.name: t for t in reader.tensors}
        self.stored_types = {}
        for tensor in reader.tensors:
            kind = tensor.tensor_type.name
            self.stored_types[kind] = self.stored_types.get(kind, 0) + 1
        raw = self._config(arch)
        if architecture.text_model_type == "gemma4_text":
            raw.update(self._gemma4_config(arch, raw))
        self.config = complete_text_config({**raw, "model_type": architecture.name})
        layers = int(self.config["num_hidden_layers"])
        self._names: dict[str, str] = {}
        for theirs, ours in _GGUF_NAMES.items():
            for i in range(layers) if "{i}" in theirs else (0,):
                if theirs.format(i=i) in self._tensors:
                    self._names[ours.format(i=i)] = theirs.format(i=i)

    def _config(self, arch: str) -> dict[str, Any]:
        def get(key: str, default: Any = None) -> Any:
            value = self._reader.value(f"{arch}.{key}")
            if isinstance(value, list) and key in _PER_LAYER_KEYS:
                value = value[0]  # per layer (Gemma 4): the first layer's here
            return default if value is None else value

        hidden, heads = int(get("embedding_length")), int(get("attention.head_count"))
        layers = int(get("block_count"))
        head_dim = int(get("attention.key_length", hidden // heads))
        embed = self._tensors["token_embd.weight"]
        vocab = int(embed.shape[-1]) if len(embed.shape) > 1 else None
        scaling = get("rope.scaling.type")
        full: dict[str, Any] = {"rope_type": "default", "rope_theta": get("rope.freq_base", 1e6)}
        if scaling == "linear":
            full = {**full, "rope_type": "linear", "factor": float(get("rope.scaling.factor"))}
        pattern = get("attention.sliding_window_pattern", _GGUF_SLIDING_PATTERN)
        if isinstance(pattern, list):  # one flag per layer: sliding?
            sliding = [bool(p) for p in pattern]
        else:  # every n-th layer global
            sliding = [(i + 1) % int(pattern) != 0 for i in range(layers)]
        eos = [
            int(i)
            for i in (
                self._reader.value("tokenizer.ggml.eos_token_id"),
                self._reader.value("tokenizer.ggml.eot_token_id"),
            )
            if i is not None
        ]
        return {
            "model_type": arch,
            "vocab_size": vocab or len(self._reader.value("tokenizer.ggml.tokens") or ()),
            "hidden_size": hidden,
            "intermediate_size": int(get("feed_forward_length")),
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": int(get("attention.head_count_kv", heads)),
            "head_dim": head_dim,
            "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-6)),
            "sliding_window": int(get("attention.sliding_window", 4096)),
            "layer_types": ["sliding_attention" if s else "full_attention" for s in sliding],
            "rope_parameters": {
                "full_attention": full,
                "sliding_attention": {
                    "rope_type": "default",
                    "rope_theta": float(get("rope.freq_base_swa", 10_000.0)),
                },
            },
            # As llama.cpp: Gemma 3 27B (62 layers) scales by hidden / heads, others by head size.
            "query_pre_attn_scalar": hidden // heads if layers == 62 else head_dim,
            "max_position_embeddings": int(get("context_length", 131_072)),
            "tie_word_embeddings": "output.weight" not in self._tensors,
            "eos_token_id": eos or None,
            "bos_token_id": self._reader.value("tokenizer.ggml.bos_token_id"),
            "pad_token_id": self._reader.value("tokenizer.ggml.padding_token_id"),
        }

    def _gemma4_config(self, arch: str, common: dict[str, Any]) -> dict[str, Any]:
        """Gemma 4's hyperparameters as llama.cpp's converter writes them: the global layers'
        head size in ``key_length`` (the sliding ones' in ``key_length_swa``), per-layer arrays
        where layers differ (feed-forward width: double for the shared layers; key/value heads),
        the proportional rotary's fraction as frequency factors (``rope_freqs``: 1e30 for the
        dimensions left unrotated), k = v as global layers without ``attn_v``."""

        def get(key: str, default: Any = None) -> Any:
            value = self._reader.value(f"{arch}.{key}")
            return default if value is None else value

        layers, sliding = int(common["num_hidden_layers"]), common["layer_types"]
        swa = [t == "sliding_attention" for t in sliding]
        first_global = swa.index(False)
        global_dim = int(get("attention.key_length"))
        ff = get("feed_forward_length")
        ff = [int(f) for f in ff] if isinstance(ff, list) else [int(ff)] * layers
        heads_kv = get("attention.head_count_kv", common["num_attention_heads"])
        heads_kv = (
            [int(h) for h in heads_kv] if isinstance(heads_kv, list) else [int(heads_kv)] * layers
        )
        shared = int(get("attention.shared_kv_layers", 0))
        fraction = 1.0
        if "rope_freqs.weight" in self._tensors:
            factors = np.asarray(self._tensors["rope_freqs.weight"].data, dtype=np.float32)
            fraction = 2 * int((factors == 1.0).sum()) / global_dim
        ple = int(get("embedding_length_per_layer_input", 0))
        ple_table = self._tensors.get("per_layer_token_embd.weight")
        experts = int(get("expert_count", 0))
        config: dict[str, Any] = {
            "head_dim": int(get("attention.key_length_swa", global_dim)),
            "global_head_dim": global_dim,
            "num_key_value_heads": heads_kv[swa.index(True)] if True in swa else heads_kv[0],
            "num_global_key_value_heads": heads_kv[first_global],
            "intermediate_size": ff[0],
            "use_double_wide_mlp": shared > 0 and ff[-1] == 2 * ff[0] and ff[0] != ff[-1],
            "num_kv_shared_layers": shared,
            "attention_k_eq_v": f"blk.{first_global}.attn_v.weight" not in self._tensors,
            "hidden_size_per_layer_input": ple,
            "final_logit_softcapping": get("final_logit_softcapping"),
            "rope_parameters": {
                "full_attention": {
                    "rope_type": "proportional",
                    "partial_rotary_factor": fraction,
                    "rope_theta": float(get("rope.freq_base", 1e6)),
                },
                "sliding_attention": {
                    "rope_type": "default",
                    "rope_theta": float(get("rope.freq_base_swa", 10_000.0)),
                },
            },
        }
        if ple and ple_table is not None:
            config["vocab_size_per_layer_input"] = int(ple_table.shape[-1])
        if experts:
            config.update(
                enable_moe_block=True,
                num_experts=experts,
                top_k_experts=int(get("expert_used_count")),
                moe_intermediate_size=int(get("expert_feed_forward_length")),
            )
        return config

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._read(
            name, self.shape_of(name), np.asarray(self._tensors[self._names[name]].data)
        )

    def shape_of(self, name: str) -> tuple[int, ...]:
        tensor = self._tensors[self._names[name]]
        return tuple(reversed(tensor.shape))  # ggml: fastest first

    def read_rows(self, name: str, index: int | None, start: int, stop: int) -> torch.Tensor:
        # The data's first dimensions are the tensor's (a quantized row is its blocks' bytes).
        shape = self.shape_of(name)
        data = np.asarray(self._tensors[self._names[name]].data)
        if index is not None:
            data, shape = data[index], shape[1:]
        rows = len(range(*slice(start, stop).indices(shape[0])))
        return self._read(name, (rows, *shape[1:]), data[start:stop])

    def _read(self, name: str, shape: tuple[int, ...], data: np.ndarray[Any, Any]) -> torch.Tensor:
        from gguf import GGMLQuantizationType, quant_shape_from_byte_shape
        from gguf.quants import dequantize

        kind = self._tensors[self._names[name]].tensor_type
        if kind == GGMLQuantizationType.F32:
            values = data.astype(np.float32)
        elif kind == GGMLQuantizationType.F16:
            values = data.view(np.float16).astype(np.float32)
        elif data.ndim < 2:
            values = dequantize(data, kind)
        else:  # into one array, some rows at a time
            values = np.empty(quant_shape_from_byte_shape(data.shape, kind), np.float32)
            for first in range(0, data.shape[0], _DEQUANTIZED_ROWS):
                rows = slice(first, first + _DEQUANTIZED_ROWS)
                values[rows] = dequantize(data[rows], kind)
        out = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32).reshape(shape))
        shift = self.architecture.gguf_norm_shift
        if shift and name.endswith("norm.weight"):
            out = out - shift  # llama.cpp stored 1 + w
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    @property
    def chat_template(self) -> str | None:
        template = self._reader.value("tokenizer.chat_template")
        return str(template) if template else None


def read_text_config(directory: Path, gguf_file: str | None) -> dict[str, Any] | None:
    """The text model's complete config from the checkpoint's header alone (no weights read),
    or None when its files are not on disk (yet)."""
    if gguf_file:
        path = directory / gguf_file
        return GGUFCheckpoint(path).config if path.is_file() else None
    path = directory / "config.json"
    return complete_text_config(json.loads(path.read_text())) if path.is_file() else None


def open_checkpoint(directory: Path, gguf_file: str | None) -> Checkpoint:
    if gguf_file:
        return GGUFCheckpoint(directory / gguf_file)
    return SafetensorsCheckpoint(directory)
