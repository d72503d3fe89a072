"""A tiny, randomly initialised Gemma 3 model and tokenizer, built and saved without downloads.

It runs the real transformers code path of ``GemmaLLM`` in milliseconds; its answers are
random text, so tests compare outputs with each other, never with expected words.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["build_tiny_gemma"]

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
_CORPUS = [
    "Hello! How are you today? I am fine, thank you.",
    "The quick brown fox jumps over the lazy dog.",
    "User: What is the capital of France? Assistant: Paris is the capital of France.",
    "Café, naïve, 日本語, emoji 🙂 and other UTF-8 text that needs several bytes.",
    "Once upon a time there was a little model that answered every question.",
    "0123456789 + - * / = ( ) [ ] { } < > , . ; : ! ? ' \" \n\n",
]


def build_tiny_gemma(
    directory: Path | str,
    *,
    chat_template: str | None = None,
    max_position_embeddings: int = 512,
    seed: int = 0,
) -> Path:
    """Save a tiny Gemma 3 causal LM and a byte-level BPE tokenizer into ``directory``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS, trainer=trainer)
    tokenizer: Any = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=bpe,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(directory)

    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=max_position_embeddings,
        sliding_window=64,
        layer_types=["sliding_attention", "full_attention"],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    model: Any = Gemma3ForCausalLM(config)
    model.eval()
    with torch.no_grad():
        # Random weights would often pick special tokens, which decode to nothing: make every
        # special token but <eos> unlikely so that answers are visible (random) text.
        for token in SPECIAL_TOKENS:
            if token != "<eos>":
                model.lm_head.weight[tokenizer.convert_tokens_to_ids(token)] = 0.0
    model.save_pretrained(directory)
    return directory
