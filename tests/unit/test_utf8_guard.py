"""Constrained answers stay valid UTF-8: xgrammar's byte-level matcher takes 0xED 0xA0-0xBF (a
UTF-16 surrogate, which UTF-8 forbids) as one character, which decodes to three U+FFFD and broke
a string's maxLength (a README example's pydantic check failed on a sampled answer)."""

from __future__ import annotations

import random

import torch

from gemma_chat.domain.models import ResponseFormat
from gemma_chat.infrastructure.llm.generation.constraints import GrammarCompiler, SurrogateGuard

BYTES = [f"<0x{b:02X}>" for b in range(256)]
PIECES = ["<pad>", "<eos>", *BYTES, "ab", "c"]  # byte-fallback vocabulary: every byte a token
EOS = 1


def byte(value: int) -> int:
    return 2 + value


class ByteTokenizer:
    """The part of a tokenizer the grammar compiler reads: its pieces and special tokens."""

    special_tokens = frozenset({"<pad>", "<eos>"})

    def token_pieces(self) -> list[str]:
        return list(PIECES)

    def token_id(self, token: str | None) -> int | None:
        return PIECES.index(token) if token in PIECES else None

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError


def short_string() -> ResponseFormat:
    return ResponseFormat.json_schema({"type": "string", "maxLength": 2})


def test_a_surrogate_never_follows_a_lone_ed_lead_byte() -> None:
    compiler = GrammarCompiler(ByteTokenizer(), len(PIECES), frozenset({EOS}))  # type: ignore[arg-type]
    constraint = compiler.constraint(short_string())
    assert constraint.accept(byte(ord('"')))
    assert constraint.accept(byte(0xED))
    assert not constraint.allows(byte(0xA0))
    assert not constraint.allows(byte(0xBF))
    assert constraint.allows(byte(0x9F))  # ED 9F BF is U+D7FF, a character
    assert not constraint.accept(byte(0xA0))  # refused, state unchanged
    assert constraint.accept(byte(0x80))
    assert constraint.accept(byte(0x80))


def test_sampled_answers_decode_within_their_max_length() -> None:
    compiler = GrammarCompiler(ByteTokenizer(), len(PIECES), frozenset({EOS}))  # type: ignore[arg-type]
    rng = random.Random(0)
    saw_ed = 0
    for _ in range(300):
        constraint = compiler.constraint(short_string())
        data = b""
        while not constraint.is_terminated:
            logits = torch.zeros(len(PIECES))
            constraint.mask_(logits)
            allowed = [i for i in range(len(PIECES)) if logits[i] == 0]
            # lean on 0xED and the continuation bytes so the surrogate range is tried often
            weights = [
                20 if i in (byte(0xED), *range(byte(0x80), byte(0xC0))) else 1 for i in allowed
            ]
            token = rng.choices(allowed, weights)[0]
            assert constraint.accept(token)
            saw_ed += token == byte(0xED)
            if token != EOS:
                data += bytes([token - 2]) if 2 <= token < 258 else PIECES[token].encode()
        text = data.decode("utf-8")  # strict: raises on a surrogate
        assert len(text) <= 2 + 2, text  # the quotes and at most two characters
    assert saw_ed > 20


def test_the_guard_refuses_a_token_that_holds_a_surrogate_and_marks_ed_endings() -> None:
    guard = SurrogateGuard([b"a", b"\xed\xa0\x80", b"x\xed", b"\xa0b", b""], 5)
    assert guard.refuses(1, after_ed=False)
    assert guard.refuses(1, after_ed=True)
    assert guard.refuses(3, after_ed=True)
    assert not guard.refuses(3, after_ed=False)
    assert not guard.refuses(0, after_ed=True)
    assert guard.ends_in_ed(2)
    assert not guard.ends_in_ed(0)
    bitmask = torch.full((1, 1), -1, dtype=torch.int32)  # every token allowed
    guard.restrict_(bitmask, after_ed=True)
    kept = [t for t in range(5) if (int(bitmask[0, 0]) >> t) & 1]
    assert kept == [0, 2, 4]
    bitmask = torch.full((1, 1), -1, dtype=torch.int32)
    guard.restrict_(bitmask, after_ed=False)
    assert [t for t in range(5) if (int(bitmask[0, 0]) >> t) & 1] == [0, 2, 3, 4]
