"""Constrained decoding: token masks from a grammar, per request (xgrammar).

``GrammarCompiler`` turns a ``ResponseFormat`` into a compiled grammar for one tokenizer (cached:
a schema compiles once), and hands each request its own ``TokenConstraint``: the grammar's state
for that answer. A generator asks the constraint which tokens may come next (a bitmask over the
vocabulary), masks the row of logits with it, and feeds it every token chosen.

Only constrained rows pay: a free row of the same batch is never touched. A greedy constrained
row first checks the unconstrained argmax against the grammar (one bit test) and masks its row
only when the grammar refuses that token (``choose_tokens`` in engine/batch_sampling.py).

xgrammar was chosen over llguidance by measurement on Gemma's 262,144-token vocabulary
(DEVELOPMENT.md, "Structured output").
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import torch

from gemma_chat.domain.errors import InvalidSchemaError
from gemma_chat.domain.models import ResponseFormat, ResponseFormatKind
from gemma_chat.infrastructure.llm.generation.tool_prompt import reason
from gemma_chat.infrastructure.llm.tokenizers.text_tokenizer import TextTokenizer

__all__ = ["GrammarCompiler", "TokenConstraint", "mask_logits_row"]

logger = logging.getLogger(__name__)

_CACHED_GRAMMARS = 64


class TokenConstraint:
    """One answer's grammar state: which tokens may come next, and the tokens chosen so far."""

    def __init__(self, matcher: Any, vocab_size: int, guard: SurrogateGuard | None = None) -> None:
        import xgrammar as xgr

        self._xgr = xgr
        self._matcher = matcher
        self.vocab_size = vocab_size
        self._guard = guard
        self._after_ed = False  # the text so far ends in a lone 0xED lead byte
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)  # [1, ceil(V / 32)] int32
        self._filled = False  # the bitmask is the current state's

    def _fill(self) -> torch.Tensor:
        if not self._filled:
            self._matcher.fill_next_token_bitmask(self._bitmask)
            if self._guard is not None:
                self._guard.restrict_(self._bitmask, after_ed=self._after_ed)
            self._filled = True
        return self._bitmask

    def allows(self, token: int) -> bool:
        """Whether the grammar accepts ``token`` next."""
        if not 0 <= token < self.vocab_size:
            return False
        word = int(self._fill()[0, token >> 5])
        return bool((word >> (token & 31)) & 1)

    def allowed(self, ids: torch.Tensor) -> torch.Tensor:
        """Whether the grammar accepts each of ``ids`` [N] next: bool [N]."""
        words = self._fill()[0].index_select(0, ids >> 5)
        return ((words >> (ids & 31).to(torch.int32)) & 1).bool()

    def allowed_count(self) -> int:
        """How many tokens the grammar accepts next."""
        octets = self._fill()[0].view(torch.uint8).long()
        return int(_POPCOUNT.index_select(0, octets).sum())

    def mask_(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` [V] with every token the grammar refuses set to -inf, in place."""
        mask_logits_row(logits, self._fill())
        return logits

    def accept(self, token: int) -> bool:
        """Advance the grammar by ``token``; False if it refuses it (state unchanged)."""
        guard = self._guard
        if guard is not None and guard.refuses(token, after_ed=self._after_ed):
            return False
        accepted = bool(self._matcher.accept_token(token))
        if accepted:
            self._filled = False
            self._after_ed = guard is not None and guard.ends_in_ed(token)
        return accepted

    @property
    def is_terminated(self) -> bool:
        """The grammar is complete and has accepted its end: nothing more may come."""
        return bool(self._matcher.is_terminated())


class SurrogateGuard:
    """Keeps a constrained answer valid UTF-8 where xgrammar does not: its byte-level matcher
    takes 0xED followed by 0xA0-0xBF (a UTF-16 surrogate, U+D800-U+DFFF, which UTF-8 forbids) as
    one character, which then decodes to three U+FFFD and breaks a string's ``maxLength`` (seen
    with xgrammar 0.2.9). Such a token is refused: one that holds the pair itself always, one that
    starts with 0xA0-0xBF after a text ending in a lone 0xED lead byte."""

    def __init__(self, token_bytes: Sequence[bytes], vocab_size: int) -> None:
        words = (vocab_size + 31) // 32
        datas = list(token_bytes[:vocab_size])
        datas += [b""] * (vocab_size - len(datas))
        # lists first: one tensor each, not 262,144 element writes
        ends_in_ed = torch.tensor([d[-1:] == b"\xed" for d in datas], dtype=torch.bool)
        starts = [bool(d) and 0xA0 <= d[0] <= 0xBF for d in datas]
        holds = [
            b"\xed" in d[:-1] and any(a == 0xED and 0xA0 <= b <= 0xBF for a, b in pairwise(d))
            for d in datas
        ]
        pad = [False] * (words * 32 - vocab_size)
        always = torch.tensor(holds + pad, dtype=torch.bool)
        after_ed = torch.tensor(starts + pad, dtype=torch.bool)
        # sets: a token's checks are two lookups
        self._ends_in_ed = frozenset(int(t) for t in ends_in_ed.nonzero().flatten())
        self._always = frozenset(int(t) for t in always.nonzero().flatten())
        self._after_ed = self._always | frozenset(int(t) for t in after_ed.nonzero().flatten())
        # the bits a bitmask [1, W] keeps: 0 where a token is refused
        self._keep_always = _pack_bits(~always)
        self._keep_after_ed = _pack_bits(~(after_ed | always))

    def refuses(self, token: int, *, after_ed: bool) -> bool:
        return token in (self._after_ed if after_ed else self._always)

    def ends_in_ed(self, token: int) -> bool:
        return token in self._ends_in_ed

    def restrict_(self, bitmask: torch.Tensor, *, after_ed: bool) -> None:
        """Clear the bits of the tokens refused in this state, in place ([1, W] int32)."""
        if after_ed:
            bitmask[0] &= self._keep_after_ed
        elif self._always:
            bitmask[0] &= self._keep_always


def _pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """bool [32 * W] -> int32 [W], bit j of word i = bits[32 * i + j] (xgrammar's layout)."""
    as_int = bits.view(-1, 32).to(torch.int64) << torch.arange(32, dtype=torch.int64)
    words = as_int.sum(dim=1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


_SHIFTS = torch.arange(32, dtype=torch.int32)
_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64)


def mask_logits_row(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """Set ``logits`` [V] to -inf where ``bitmask`` [1, ceil(V / 32)] has a 0 bit, in place
    (any float dtype; xgrammar's own kernel takes float32 only)."""
    size = logits.shape[-1]
    allowed = ((bitmask[0].unsqueeze(-1) >> _SHIFTS) & 1).view(-1)[:size]  # [V]
    logits.masked_fill_(allowed == 0, float("-inf"))


class GrammarCompiler:
    """Compiles response formats for one tokenizer; thread-safe, results cached (LRU)."""

    def __init__(self, tokenizer: TextTokenizer, vocab_size: int, end_ids: frozenset[int]):
        self._tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._end_ids = sorted(end_ids)
        self._lock = threading.Lock()
        self._compiler: Any = None
        self._guard: SurrogateGuard | None = None
        self._compiled: OrderedDict[str, Any] = OrderedDict()

    def _xgr_compiler(self) -> Any:
        with self._lock:
            if self._compiler is None:
                import xgrammar as xgr

                info = _tokenizer_info(self._tokenizer, self.vocab_size, self._end_ids)
                self._guard = SurrogateGuard(info.decoded_vocab, self.vocab_size)
                self._compiler = xgr.GrammarCompiler(info, max_threads=1)
            return self._compiler

    def compile(self, response_format: ResponseFormat) -> Any:
        """The compiled grammar of ``response_format``; ``InvalidSchemaError`` if it has none."""
        key = json.dumps(response_format.to_dict(), sort_keys=True)
        with self._lock:
            compiled = self._compiled.get(key)
            if compiled is not None:
                self._compiled.move_to_end(key)
                return compiled
        compiler = self._xgr_compiler()
        try:
            compiled = _compile(compiler, response_format)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise InvalidSchemaError(
                f"Invalid {response_format.kind.value} response format: {reason(exc)}",
                field="response_format",
            ) from None
        with self._lock:
            self._compiled[key] = compiled
            while len(self._compiled) > _CACHED_GRAMMARS:
                self._compiled.popitem(last=False)
        return compiled

    def constraint(self, response_format: ResponseFormat) -> TokenConstraint:
        """A new answer's grammar state."""
        import xgrammar as xgr

        compiled = self.compile(response_format)
        return TokenConstraint(xgr.GrammarMatcher(compiled), self.vocab_size, self._guard)


def _compile(compiler: Any, fmt: ResponseFormat) -> Any:
    kind = fmt.kind
    if kind is ResponseFormatKind.JSON_SCHEMA:
        assert fmt.schema is not None
        # strict: no properties beyond the schema's, as OpenAI's strict mode
        return compiler.compile_json_schema(
            json.dumps(fmt.schema), any_whitespace=False, strict_mode=fmt.strict
        )
    if kind is ResponseFormatKind.JSON_OBJECT:
        return compiler.compile_json_schema(
            json.dumps({"type": "object"}), any_whitespace=False, strict_mode=False
        )
    if kind is ResponseFormatKind.REGEX:
        assert fmt.pattern is not None
        return compiler.compile_regex(fmt.pattern)
    if kind is ResponseFormatKind.CHOICE:
        alternatives = " | ".join(json.dumps(c) for c in fmt.choices)
        return compiler.compile_grammar(f"root ::= {alternatives}")
    assert fmt.grammar is not None
    return compiler.compile_grammar(fmt.grammar)


def _tokenizer_info(tokenizer: TextTokenizer, vocab_size: int, end_ids: list[int]) -> Any:
    """xgrammar's view of the vocabulary: each token's text, special tokens as empty ones (no
    grammar ever allows them), the end-of-answer tokens as its stop tokens."""
    import xgrammar as xgr

    hf = getattr(tokenizer, "hf_tokenizer", None)
    if hf is not None:  # a transformers tokenizer: xgrammar reads it itself
        return xgr.TokenizerInfo.from_huggingface(hf, vocab_size=vocab_size, stop_token_ids=end_ids)
    pieces_of = getattr(tokenizer, "token_pieces", None)
    if pieces_of is None:
        raise InvalidSchemaError(
            f"Structured output needs the vocabulary of the tokenizer; "
            f"{type(tokenizer).__name__} does not list it."
        )
    pieces: list[str] = list(pieces_of())
    specials = {tokenizer.token_id(t) for t in tokenizer.special_tokens}
    for index in specials:
        if index is not None and 0 <= index < len(pieces):
            pieces[index] = ""
    pieces += [""] * (vocab_size - len(pieces))
    # The native tokenizer reads SentencePiece-style vocabularies only (byte fallback); a
    # tokenizer.json says what it is.
    vocab_type, add_prefix_space = xgr.VocabType.BYTE_FALLBACK, False
    backend = getattr(tokenizer, "backend_json", None)
    spec = backend() if backend is not None else None
    if spec is not None:
        metadata = xgr.TokenizerInfo._detect_metadata_from_hf(spec)
        vocab_type = xgr.VocabType(metadata["vocab_type"])
        add_prefix_space = bool(metadata["add_prefix_space"])
    return xgr.TokenizerInfo(
        pieces[:vocab_size],
        vocab_type=vocab_type,
        vocab_size=vocab_size,
        stop_token_ids=end_ids,
        add_prefix_space=add_prefix_space,
    )
