"""Tiny random Gemma 4 text models, one per feature the engine must reproduce, built from
transformers' ``Gemma4TextConfig``, saved as safetensors and written as GGUF the way llama.cpp's
converter writes Gemma 4 (norms as they are, head sizes and per-layer arrays as metadata); and
the fixtures their test modules share: import ``one_thread`` and ``one_thread_kernels`` (the
fixture ``kernels``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from gemma_chat.infrastructure.llm.engine.q8 import Q8Kernels, load_kernels

VOCAB = 512

_COMMON: dict[str, Any] = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "global_head_dim": 64,
    "sliding_window": 16,  # exceeded within the 64 steps
    "max_position_embeddings": 1024,
    "initializer_range": 0.5,  # peaked next-token distributions, as a trained model's
    "final_logit_softcapping": 30.0,
    "tie_word_embeddings": True,
    "hidden_size_per_layer_input": 0,
}

VARIANTS: dict[str, dict[str, Any]] = {
    # E2B/E4B-like: per-layer inputs
    "ple": {
        "num_hidden_layers": 6,
        "hidden_size_per_layer_input": 32,
        "vocab_size_per_layer_input": VOCAB,
    },
    # keys and values shared by the last layers, k = v on the global layers (one kv head
    # there), the shared layers' MLP twice as wide
    "shared-kv": {
        "num_hidden_layers": 8,
        "layer_types": ["sliding_attention"] * 2
        + ["full_attention"]
        + ["sliding_attention"] * 2
        + ["full_attention", "sliding_attention", "full_attention"],
        "num_kv_shared_layers": 3,
        "attention_k_eq_v": True,
        "num_global_key_value_heads": 1,
        "use_double_wide_mlp": True,
    },
    # 26B-A4B-like (top 8 of 128): a dense MLP and top 4 of 16 experts in every layer
    "moe": {
        "num_hidden_layers": 6,
        "enable_moe_block": True,
        "num_experts": 16,
        "top_k_experts": 4,
        "moe_intermediate_size": 64,
        "attention_k_eq_v": True,
        "num_global_key_value_heads": 1,
    },
}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """These models' matrices are tiny: handing each product to a second thread costs more than
    the product (far more on a loaded machine), and the results do not depend on the threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", name="kernels")
def one_thread_kernels(
    tmp_path_factory: pytest.TempPathFactory, one_thread: None
) -> Iterator[Q8Kernels]:
    """The kernels, on one thread too (``one_thread``)."""
    built = load_kernels(tmp_path_factory.mktemp("kernels"))
    if built is None:
        pytest.skip("no C compiler: the int8 kernels cannot be built")
    built._lib.gemma_set_threads(1)
    yield built
    built._lib.gemma_set_threads(torch.get_num_threads())


def text_config(variant: str, vocab: int = VOCAB) -> Any:
    from transformers import Gemma4TextConfig

    values = {**_COMMON, **VARIANTS[variant], "vocab_size": vocab}
    if values.get("hidden_size_per_layer_input"):
        values["vocab_size_per_layer_input"] = vocab
    return Gemma4TextConfig(**values)


def build_text_model(variant: str, seed: int = 0, vocab: int = VOCAB) -> Any:
    from transformers import Gemma4ForCausalLM

    torch.manual_seed(seed)
    model = Gemma4ForCausalLM(text_config(variant, vocab)).eval()
    _randomize_scales(model)
    return model


def build_multimodal_model(variant: str, seed: int = 0) -> Any:
    """The released layout (``Gemma4ForConditionalGeneration``, the text model under
    ``model.language_model.``), without its vision and audio towers."""
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration

    torch.manual_seed(seed)
    config = Gemma4Config(
        text_config=text_config(variant).to_dict(), vision_config=None, audio_config=None
    )
    model = Gemma4ForConditionalGeneration(config).eval()
    _randomize_scales(model)
    return model


def _randomize_scales(model: Any) -> None:
    # Gemma 4 initialises its norms and scalars to one: random ones catch a misplaced one. The
    # query and key norms get about head_size ** -0.25 each: Gemma 4 does not scale attention
    # scores, a trained model's norms do (at one, these random models' attention would be
    # near-argmax, flipping on any rounding, as a trained model's is not).
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                tensor.uniform_(0.7, 1.3).mul_(tensor.shape[0] ** -0.25)
            elif name.endswith(("norm.weight", "layer_scalar", "router.scale", "per_expert_scale")):
                tensor.uniform_(0.5, 1.5)


# transformers' names (no prefix) -> llama.cpp's (gguf's tensor map for GEMMA4)
_GGUF = {
    "embed_tokens.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    "embed_tokens_per_layer.weight": "per_layer_token_embd.weight",
    "per_layer_model_projection.weight": "per_layer_model_proj.weight",
    "per_layer_projection_norm.weight": "per_layer_proj_norm.weight",
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
    "pre_feedforward_layernorm_2.weight": "pre_ffw_norm_2.weight",
    "post_feedforward_layernorm_1.weight": "post_ffw_norm_1.weight",
    "post_feedforward_layernorm_2.weight": "post_ffw_norm_2.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "router.proj.weight": "ffn_gate_inp.weight",
    "router.scale": "ffn_gate_inp.scale",
    "router.per_expert_scale": "ffn_down_exps.scale",
    "experts.gate_up_proj": "ffn_gate_up_exps.weight",
    "experts.down_proj": "ffn_down_exps.weight",
    "layer_scalar": "layer_output_scale.weight",
    "per_layer_input_gate.weight": "inp_gate.weight",
    "per_layer_projection.weight": "proj.weight",
    "post_per_layer_input_norm.weight": "post_norm.weight",
}


def write_gguf(model: Any, path: Path, quant: str, *, chat_template: str | None = None) -> Path:
    """The text model as llama.cpp's converter writes Gemma 4: norms, scales and vectors in
    float32, matrices in ``quant`` (F16, BF16, Q8_0 or Q4_0), the hyperparameters as metadata
    (per-layer arrays for the feed-forward width and key/value heads where they differ)."""
    import gguf

    c = model.config
    plain = c.to_dict()  # per-layer attributes (head size, kv heads) as their global values
    qtype = gguf.GGMLQuantizationType[quant]
    writer = gguf.GGUFWriter(str(path), "gemma4")
    layers = c.num_hidden_layers
    sliding = [t == "sliding_attention" for t in c.layer_types]
    writer.add_block_count(layers)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    first_shared = layers - c.num_kv_shared_layers
    if c.use_double_wide_mlp:
        n_ff = c.intermediate_size
        writer.add_feed_forward_length(
            [n_ff if i < first_shared else 2 * n_ff for i in range(layers)]
        )
    else:
        writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    global_kv = c.per_layer_config[c.layer_types.index("full_attention")].num_key_value_heads
    if global_kv != plain["num_key_value_heads"]:
        writer.add_head_count_kv(
            [plain["num_key_value_heads"] if s else global_kv for s in sliding]
        )
    else:
        writer.add_head_count_kv(plain["num_key_value_heads"])
    global_dim = c.per_layer_config[c.layer_types.index("full_attention")].head_dim
    writer.add_key_length(global_dim)
    writer.add_value_length(global_dim)
    writer.add_key_length_swa(plain["head_dim"])
    writer.add_value_length_swa(plain["head_dim"])
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_sliding_window(c.sliding_window)
    writer.add_sliding_window_pattern(sliding)
    writer.add_shared_kv_layers(c.num_kv_shared_layers)
    writer.add_embedding_length_per_layer_input(c.hidden_size_per_layer_input or 0)
    writer.add_rope_freq_base(c.rope_parameters["full_attention"]["rope_theta"])
    writer.add_rope_freq_base_swa(c.rope_parameters["sliding_attention"]["rope_theta"])
    writer.add_rope_dimension_count(global_dim)
    writer.add_rope_dimension_count_swa(plain["head_dim"])
    if c.final_logit_softcapping:
        writer.add_final_logit_softcapping(c.final_logit_softcapping)
    if c.enable_moe_block:
        writer.add_expert_count(c.num_experts)
        writer.add_expert_used_count(c.top_k_experts)
        writer.add_expert_feed_forward_length(c.moe_intermediate_size)
    writer.add_eos_token_id(1)
    writer.add_eot_token_id(106)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    # The full layers' proportional rotary as llama.cpp encodes it: frequency factors, 1e30
    # for the dimensions left unrotated.
    rotated = int(global_dim * c.rope_parameters["full_attention"]["partial_rotary_factor"] / 2)
    factors = [1.0] * rotated + [1e30] * (global_dim // 2 - rotated)
    writer.add_tensor("rope_freqs.weight", np.array(factors, dtype=np.float32))
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
        if values.ndim < 2 or values.shape[-1] % 32:
            writer.add_tensor(theirs, values.reshape(values.shape or (1,)))
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
