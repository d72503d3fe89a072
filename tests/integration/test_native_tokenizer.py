"""The native tokenizer (kernels/bpe.c) gives the ids and text `tokenizers` gives."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers

from gemma_chat.infrastructure.llm.adapters.local_model import GemmaLLM
from gemma_chat.infrastructure.llm.tokenizers.hf_tokenizers import HFTokenizersTokenizer
from gemma_chat.infrastructure.llm.tokenizers.native_bpe import (
    VOCABULARY,
    NativeBPETokenizer,
    open_tokenizer,
    write_vocabulary,
)
from gemma_chat.testing.tiny_gemma import build_tiny_gemma

PIECES = [
    "<start_of_turn>", "<end_of_turn>", "<bos>", "\n", "\n\n", " ", "  ", "\t", "é", "日本",
    "😀", "<unused1>", "<h1>", "<0x41>", "\u2581", "abc", "The", "ing", " the", "\u200b", "\x00",
    "\ufffd", "ﬁ", "Ω", "<", ">", "<start_of", "\r", "hello world",
]  # fmt: skip


def random_texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)

    def char() -> str:
        return chr(
            rng.choice(
                [
                    rng.randrange(32, 127),
                    rng.randrange(0x80, 0x800),
                    rng.randrange(0x800, 0xD7FF),
                    rng.randrange(0x10000, 0x1F9FF),
                ]
            )
        )

    return [
        "".join(
            rng.choice(PIECES) if rng.random() < 0.5 else char() for _ in range(rng.randrange(40))
        )
        for _ in range(count)
    ]


def sentencepiece_style_tokenizer(directory: Path) -> Path:
    """A small Gemma-like tokenizer.json: BPE with byte fallback, spaces as U+2581."""
    letters = "abcdefghijklmnopqrstuvwxyz\u2581.,"
    vocab: dict[str, int] = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for c in letters:
        vocab[c] = len(vocab)
    merges: list[tuple[str, str]] = []
    for left, right in [("\u2581", "t"), ("h", "e"), ("\u2581t", "he"), ("i", "n"), ("in", "g"),
                        ("\u2581", "\u2581"), ("e", "r"), ("\u2581", "a")]:  # fmt: skip
        vocab.setdefault(left + right, len(vocab))
        merges.append((left, right))
    vocab["<start_of_turn>"] = len(vocab)
    vocab["<end_of_turn>"] = len(vocab)
    model = models.BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Replace(" ", "\u2581")
    tokenizer.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    tokenizer.add_special_tokens(["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"])
    tokenizer.add_tokens([AddedToken("\n\n", normalized=False)])
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {"bos_token": "<bos>", "eos_token": "<eos>"}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


def assert_same(native: NativeBPETokenizer, reference: Any, texts: list[str]) -> None:
    for text in texts:
        ids = reference.encode(text, add_special_tokens=False).ids
        assert native.encode(text) == ids, text
        assert native.decode(ids) == reference.decode(ids, skip_special_tokens=True), text


@pytest.fixture
def small(tmp_path: Path) -> Path:
    directory = sentencepiece_style_tokenizer(tmp_path / "tok")
    assert write_vocabulary(directory)
    return directory


def test_a_sentencepiece_style_tokenizer_encodes_and_decodes_as_tokenizers_does(
    small: Path,
) -> None:
    native = NativeBPETokenizer.load(small, small.parent)
    assert native is not None
    reference = Tokenizer.from_file(str(small / "tokenizer.json"))
    assert_same(native, reference, ["the thing is", "  a  b  ", "zebra 😀 <bos>x\n\n\ny"])
    assert_same(native, reference, random_texts(300, seed=1))
    assert native.vocab_size == reference.get_vocab_size()
    assert native.token_id("<end_of_turn>") == reference.token_to_id("<end_of_turn>")
    assert native.token_id("not a token") is None
    assert native.eos_token_id == 1
    assert native.special_tokens == {"<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"}


def test_bytes_of_an_incomplete_character_decode_as_replacement_characters(small: Path) -> None:
    native = NativeBPETokenizer.load(small, small.parent)
    assert native is not None
    reference = Tokenizer.from_file(str(small / "tokenizer.json"))
    ids = reference.encode("日", add_special_tokens=False).ids  # three byte tokens
    assert len(ids) == 3
    for cut in ([ids[0]], ids[:2], [ids[1], ids[2]], [ids[0], ids[2]]):
        assert native.decode(cut) == reference.decode(cut)


def test_open_tokenizer_falls_back_to_tokenizers_without_the_native_file(small: Path) -> None:
    assert isinstance(open_tokenizer(small), NativeBPETokenizer)
    (small / VOCABULARY).unlink()
    fallback = open_tokenizer(small)
    assert type(fallback) is HFTokenizersTokenizer
    reference = Tokenizer.from_file(str(small / "tokenizer.json"))
    assert fallback.encode("the thing") == reference.encode("the thing").ids


def test_tokenizers_the_c_code_does_not_reproduce_get_no_native_file(tmp_path: Path) -> None:
    build_tiny_gemma(tmp_path / "tiny")  # byte-level BPE: another kind
    assert not write_vocabulary(tmp_path / "tiny")
    assert not (tmp_path / "tiny" / VOCABULARY).exists()


def test_the_embedded_models_tokenizer_is_native_and_equal_to_tokenizers(
    embedded_llm: GemmaLLM,
) -> None:
    loop: Any = embedded_llm._generator
    assert isinstance(loop.tokenizer, NativeBPETokenizer)
    reference = Tokenizer.from_file(str(loop.directory / "tokenizer.json"))
    license_text = Path(json.__file__).parent.parent.joinpath("LICENSE.txt")
    texts = [
        *random_texts(500, seed=2),
        "<start_of_turn>user\nWrite a haiku<end_of_turn>\n<start_of_turn>model\n",
        "Résumé: naïve café, 日本語のテキスト, emoji 😀🎉, tabs\tand\r\nnewlines\n\n\n\nend",
        " " * 40 + "x",
        license_text.read_text() if license_text.is_file() else "no licence here",
    ]
    assert_same(loop.tokenizer, reference, texts)


def test_a_library_without_the_tokenizer_falls_back_instead_of_failing(
    small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gemma_chat.infrastructure.llm.tokenizers.native_bpe as bpe_module

    class Stale:  # a build of older sources: no bpe_* functions
        def __getattr__(self, name: str) -> Any:
            raise AttributeError(name)

    monkeypatch.setattr(bpe_module, "load_library", lambda *a, **k: Stale())
    assert NativeBPETokenizer.load(small, small.parent) is None
    assert type(open_tokenizer(small)) is HFTokenizersTokenizer


def test_a_forced_kernel_variant_is_the_library_the_tokenizer_loads(
    small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gemma_chat.infrastructure.llm.engine import native

    variant = native.variants_for(native.machine())[0].name  # generic: never auto's pick here
    monkeypatch.setattr(native, "_loaded", {})
    cache = tmp_path / "cache"
    tokenizer = NativeBPETokenizer.load(small, cache, variant=variant)
    assert tokenizer is not None
    assert tokenizer.encode("the thing is")
    assert [path.name.split("-")[0] for path in native._loaded] == [variant]
    assert {p.name.split("-")[0] for p in (cache / "kernels").glob("*.so")} == {variant}
    # one this CPU cannot run: the tokenizer steps aside (the model's load says why)
    missing = [
        v for v in native.variants_for(native.machine()) if not v.requires <= native.cpu_features()
    ]
    if missing:
        assert NativeBPETokenizer.load(small, cache, variant=missing[0].name) is None
