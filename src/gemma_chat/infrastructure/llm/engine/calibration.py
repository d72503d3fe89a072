"""What the 4-bit rounding weighs its errors by: how large each projection's inputs are.

A projection's output error from rounding weight column k is scaled by its input x_k, so the
rounding of a block does best to weigh each column's squared error by the mean of x_k^2 over
real text (llama.cpp's "importance matrix"). It is measured once, at conversion, by running the
float model over a calibration text: the docstrings of a few standard-library modules, present
wherever Python is, and not the text the benchmark's perplexity is measured on.

``input_importance`` runs a whole float model; ``BlockByBlockImportance`` gives the same
numbers, bit for bit, holding one block's float weights at a time (conversion, tensor by
tensor: ``conversion.py``). Both measure each projection on the tokens of the model's last
pass over the text (the cache's ``chunk`` tokens of it): that is what the first one did, and
the second one keeps its numbers so that converted models stay the same bytes.

The output head's GPTQ rounding (``gptq.py``) needs more: the covariance of the head's inputs
(the final norm's outputs), over text varied enough that the rounding does not fit one kind of
text. Docstrings alone made it worse on other text (DEVELOPMENT.md, "4-bit weights"), so the
covariance also takes in the model's own samples (``model_samples``: seeded, from the first
token), which range over whatever the model was trained on: prose, code, markup, languages.
``BlockByBlockImportance.head_inputs`` gives those inputs for any sequence, block by block.
Gemma 4 (converted a piece of a weight at a time, its blocks never run in float at conversion)
takes them from its int8 model instead (``head_statistics``), over the same sequences.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import email
import http
import json
import logging
import pathlib
import subprocess
import textwrap
import threading
import unittest
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from gemma_chat.infrastructure.heap import give_back_freed_heap
from gemma_chat.infrastructure.llm.engine.config import Gemma3Config
from gemma_chat.infrastructure.llm.engine.gemma4 import Gemma4Model
from gemma_chat.infrastructure.llm.engine.kv_cache import KVCache
from gemma_chat.infrastructure.llm.engine.model import Block, Gemma3Model, RMSNorm

__all__ = [
    "CALIBRATION_TOKENS",
    "SAMPLES",
    "SAMPLE_SEED",
    "SAMPLE_TOKENS",
    "BlockByBlockImportance",
    "calibration_sequences",
    "calibration_text",
    "head_statistics",
    "input_importance",
    "model_samples",
]

CALIBRATION_TOKENS = 1024
SAMPLES, SAMPLE_TOKENS, SAMPLE_SEED = 16, 160, 0  # the model's own text for the head's covariance
_LINEARS = ("qkv", "o", "gate_up", "down")
_MODULES = (json, argparse, textwrap, asyncio, collections, logging, pathlib, subprocess,
            threading, unittest, email, http)  # fmt: skip


def calibration_text() -> str:
    return "\n\n".join(module.__doc__ or "" for module in _MODULES)


def input_importance(model: Gemma3Model, ids: list[int]) -> dict[str, torch.Tensor]:
    """The mean square of each input feature of every projection over the tokens ``ids`` (a
    float model, op by op), by the name ``q8.quantize_model`` gives it: ``lm_head``,
    ``blocks.<i>.<qkv|o|gate_up|down>``."""
    modules: dict[str, torch.nn.Module] = {"lm_head": model.lm_head}
    for i, block in enumerate(model.blocks):
        for name in _LINEARS:
            modules[f"blocks.{i}.{name}"] = getattr(block, name)
    found: dict[str, torch.Tensor] = {}

    def recorder(name: str) -> Any:
        def record(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].reshape(-1, args[0].shape[-1]).float()
            found[name] = (x * x).mean(dim=0)

        return record

    hooks = [module.register_forward_pre_hook(recorder(n)) for n, module in modules.items()]
    tokens = torch.tensor([ids[:CALIBRATION_TOKENS]])
    try:
        cache = KVCache(model.config, slots=1, dtype=model.kv_dtype)
        with torch.inference_mode():
            positions = torch.arange(tokens.shape[1]).view(1, -1)
            model(tokens, positions, torch.tensor([0]), cache, last_only=False)
    finally:
        for hook in hooks:
            hook.remove()
    return found


class BlockByBlockImportance:
    """``input_importance`` of a float32 model given one block at a time, in order: the tokens'
    hidden states go through each block as it comes (every pass of ``chunk`` tokens, each with
    the keys and values of the passes before it, as the whole model computes them), and the
    block's float weights can go once it has been run."""

    def __init__(self, config: Gemma3Config, table: torch.Tensor, ids: list[int]) -> None:
        """``table``: the float32 embedding table [V, E] (only the tokens' rows are kept)."""
        self.config = config
        with torch.device("meta"):
            self._tables = Gemma3Model(config)  # its rotary tables and masks, no weights
        self._tables.compute_dtype = torch.float32
        tokens = torch.tensor([ids[:CALIBRATION_TOKENS]])
        self._chunk = KVCache(config, slots=1, dtype=torch.float32).chunk
        scale = torch.tensor(self._tables.embed_scale, dtype=torch.float32)
        # Per pass: positions [1, S] and hidden states [1, S, E], as Gemma3Model.forward has them.
        self._passes: list[tuple[torch.Tensor, torch.Tensor]] = []
        for start in range(0, tokens.shape[1], self._chunk):
            piece = tokens[:, start : start + self._chunk]
            positions = torch.arange(start, start + piece.shape[1]).view(1, -1)
            self._passes.append((positions, F.embedding(piece, table).float() * scale))

    def block(self, layer: int, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run block ``layer`` (``weights``: its float32 tensors by ``Block``'s names) and give
        its projections' importance by ``quantize_model``'s names (``blocks.<i>.<name>``)."""
        sliding = self.config.sliding_layers[layer]
        # The block alone, with a cache of its own: its rows grow as the whole model's do.
        alone = replace(self.config, num_layers=1, sliding_layers=(sliding,))
        with torch.device("meta"):
            block = Block(alone, 0)
        block.load_state_dict(dict(weights), assign=True, strict=True)
        cache = KVCache(alone, slots=1, dtype=torch.float32, chunk=self._chunk)
        found: dict[str, torch.Tensor] = {}
        hooks = [
            getattr(block, name).register_forward_pre_hook(
                _recorder(found, f"blocks.{layer}.{name}")
            )
            for name in _LINEARS
        ]
        try:
            with torch.inference_mode():
                for i, (positions, x) in enumerate(self._passes):
                    last = int(positions.max())
                    cache.ensure(0, last + 1)
                    length = last + 1
                    cos, sin = self._tables.rope_tables(sliding, length)
                    rope = (cos[positions], sin[positions])
                    mask = self._tables._mask(positions, length, sliding, torch.float32)
                    self._passes[i] = (
                        positions,
                        block(x, rope, [0], positions, cache, mask, length),
                    )
        finally:
            for hook in hooks:
                hook.remove()
        return found

    def head(self, norm_weight: torch.Tensor) -> torch.Tensor:
        """The output head's importance, after every block has run (``norm_weight``: the final
        norm's float32 weight)."""
        norm = RMSNorm(self.config.hidden_size, self.config.rms_norm_eps)
        norm.weight = torch.nn.Parameter(norm_weight, requires_grad=False)
        found: dict[str, torch.Tensor] = {}
        record = _recorder(found, "lm_head")
        with torch.inference_mode():
            for _, x in self._passes:
                record(norm, (norm(x),))
        return found["lm_head"]

    def head_inputs(self, norm_weight: torch.Tensor) -> torch.Tensor:
        """The output head's inputs [T, E] at every token of the passes, after every block has
        run (``norm_weight``: the final norm's float32 weight)."""
        norm = RMSNorm(self.config.hidden_size, self.config.rms_norm_eps)
        norm.weight = torch.nn.Parameter(norm_weight, requires_grad=False)
        with torch.inference_mode():
            return torch.cat([norm(x).reshape(-1, x.shape[-1]).float() for _, x in self._passes])


def calibration_sequences(ids: list[int], bos: int) -> list[list[int]]:
    """The calibration text's tokens ``ids`` (without a first token) in sequences of at most
    ``CALIBRATION_TOKENS``, each starting with ``bos``."""
    step = CALIBRATION_TOKENS - 1
    return [[bos, *ids[i : i + step]] for i in range(0, len(ids), step)]


def model_samples(model: Gemma3Model | Gemma4Model, bos: int) -> list[list[int]]:
    """``SAMPLES`` texts of ``SAMPLE_TOKENS`` tokens (``bos`` first) that ``model`` writes from
    its first token, sampled at temperature 1 from a seeded generator, all in one batch."""
    generator = torch.Generator().manual_seed(SAMPLE_SEED)
    cache = KVCache(model.config, slots=SAMPLES, dtype=model.kv_dtype)
    tokens = torch.full((SAMPLES, 1), bos)
    written = [tokens]
    slots = torch.arange(SAMPLES)
    with torch.inference_mode():
        for position in range(SAMPLE_TOKENS - 1):
            positions = torch.full((SAMPLES, 1), position)
            logits = model(tokens, positions, slots, cache, last_only=True).float()  # [B, V]
            tokens = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)
            written.append(tokens)
            if position % 8 == 7:
                # the steps' freed blocks (the [B, V] logits, the growing cache) fit glibc's
                # later requests badly: untrimmed, the heap grew by GBs over the samples
                give_back_freed_heap()
    return [row.tolist() for row in torch.cat(written, dim=1)]


def head_statistics(
    model: Gemma4Model, text: list[list[int]], samples: list[list[int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """What a 4-bit head's GPTQ rounding is fitted on, from ``model``'s own head inputs (the
    final norm's outputs) at every token of ``text`` (the calibration text's sequences) and
    ``samples`` (``model_samples``'): their covariance E[x x^T] [E, E] (float64) over both,
    and the mean square of each feature [E] over the text, as ``conversion.convert_weights``
    takes them from Gemma 3's float blocks. Summed a sequence at a time: [E, E] is held, not
    the inputs."""
    width = model.config.hidden_size
    covariance = torch.zeros((width, width), dtype=torch.float64)
    squares = torch.zeros(width, dtype=torch.float64)
    tokens = text_tokens = 0
    with torch.inference_mode():
        for kind, sequences in (("text", text), ("samples", samples)):
            for ids in sequences:
                n = len(ids)
                cache = KVCache(model.config, slots=1, dtype=model.kv_dtype)
                slots = torch.zeros(n, dtype=torch.long)
                rows = list(range(n))
                x = model.head_inputs(torch.tensor(ids), torch.arange(n), slots, cache, rows)
                x = x.double()
                covariance += x.T @ x
                tokens += n
                if kind == "text":
                    squares += (x * x).sum(dim=0)
                    text_tokens += n
    if not text_tokens:
        raise ValueError("the head's statistics need the calibration text's tokens: give them")
    return covariance / tokens, (squares / text_tokens).float()


def _recorder(found: dict[str, torch.Tensor], name: str) -> Any:
    def record(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].reshape(-1, args[0].shape[-1]).float()
        found[name] = (x * x).mean(dim=0)

    return record
