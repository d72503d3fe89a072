"""What differs between the checkpoints the native engine meets, stated once.

A checkpoint names its architecture (``model_type`` in ``config.json``, ``general.architecture``
in a GGUF); ``ARCHITECTURES`` says, for each name, where its text model's hyperparameters are
(the whole config, or ``text_config`` of a multimodal checkpoint), under which prefix its text
weights are named, what llama.cpp adds to its norm weights in a GGUF, and whether the engine
runs it. Sizes of one architecture (Gemma 3 1B, 4B, 12B, 27B; Gemma 4 E2B, E4B, 26B-A4B, 31B)
differ only in their config (``Gemma3Config``, ``Gemma4Config``), never in code; the model
class, loading and quantization of each architecture are chosen in ``text_models.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "architecture_named",
    "complete_text_config",
]


@dataclass(frozen=True, slots=True)
class Architecture:
    name: str  # model_type in config.json (or GGUF's general.architecture, mapped)
    text_model_type: str  # the model_type of its text model's config
    # Where the text model's config is: the config itself, or this key of it (multimodal).
    text_config_key: str | None
    # Prefixes of the text model's weight names, most specific first ("" last).
    weight_prefixes: tuple[str, ...]
    # What llama.cpp's converter adds to RMSNorm weights (Gemma 3's norm scales by 1 + w, so
    # llama.cpp stores 1 + w; Gemma 4's scales by w, stored as it is).
    gguf_norm_shift: float = 1.0
    # None: the native engine runs it; else why not (the transformers engine runs it instead).
    unsupported: str | None = None


_GEMMA3_PREFIXES = ("model.language_model.", "language_model.model.", "model.", "")

ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("gemma3_text", "gemma3_text", None, _GEMMA3_PREFIXES),
        # The multimodal 4B/12B/27B checkpoints: their text part (the vision tower is ignored).
        Architecture("gemma3", "gemma3_text", "text_config", _GEMMA3_PREFIXES),
        Architecture("gemma4_text", "gemma4_text", None, _GEMMA3_PREFIXES, gguf_norm_shift=0.0),
        # E2B/E4B/26B/31B as released: their text part (vision and audio towers ignored).
        Architecture("gemma4", "gemma4_text", "text_config", _GEMMA3_PREFIXES, gguf_norm_shift=0.0),
    )
}


def architecture_named(name: str | None) -> Architecture | None:
    return ARCHITECTURES.get(name or "")


def complete_text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The text model's config of a checkpoint's ``config.json``, with transformers' defaults
    filled in (a multimodal checkpoint's ``text_config`` omits the fields left at default).

    Raises ``KeyError`` for an architecture not in ``ARCHITECTURES``."""
    architecture = ARCHITECTURES[str(config.get("model_type"))]
    text = dict(config)
    if architecture.text_config_key is not None:
        text = dict(config.get(architecture.text_config_key) or {})
        # A multimodal config's vocabulary and token ids may be given at its top level only.
        for key in ("vocab_size", "eos_token_id", "bos_token_id", "pad_token_id"):
            if key not in text and key in config:
                text[key] = config[key]
        if "tie_word_embeddings" in config:
            text.setdefault("tie_word_embeddings", config["tie_word_embeddings"])
    text["model_type"] = architecture.text_model_type
    from transformers import AutoConfig

    known = {k: v for k, v in text.items() if k not in ("architectures", "transformers_version")}
    model_type = known.pop("model_type")
    completed: dict[str, Any] = AutoConfig.for_model(model_type, **known).to_dict()
    completed["model_type"] = architecture.text_model_type
    return completed
