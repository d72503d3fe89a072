"""What the 4-bit rounding weighs its errors by: how large each projection's inputs are.

A projection's output error from rounding weight column k is scaled by its input x_k, so the
rounding of a block does best to weigh each column's squared error by the mean of x_k^2 over
real text (llama.cpp's "importance matrix"). It is measured once, at conversion, by running the
float model over a calibration text: the docstrings of a few standard-library modules, present
wherever Python is, and not the text the benchmark's perplexity is measured on.
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
from typing import Any

import torch

from gemma_chat.infrastructure.llm.engine.kv_cache import KVCache
from gemma_chat.infrastructure.llm.engine.model import Gemma3Model

__all__ = ["CALIBRATION_TOKENS", "calibration_text", "input_importance"]

CALIBRATION_TOKENS = 1024
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
