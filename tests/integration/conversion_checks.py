"""What the conversion tests of both families share (test_conversion_tensor_by_tensor.py,
Gemma 3; test_gemma4_conversion.py, Gemma 4): the whole-model conversion's last step, and the
check that a conversion a piece at a time wrote the same file."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file


def save_whole(model: torch.nn.Module, target: Path) -> None:
    """The whole-model conversion's last step: the model's state dict, a tied head once (it is
    the embedding's tensor), saved by safetensors."""
    state = dict(model.state_dict())
    head, table = state.get("lm_head.weight"), state.get("embed.weight")
    if head is not None and table is not None and head.data_ptr() == table.data_ptr():
        del state["lm_head.weight"]
    save_file({k: v.contiguous() for k, v in state.items()}, target)


def assert_same_bytes(new: Path, old: Path) -> None:
    new_bytes, old_bytes = new.read_bytes(), old.read_bytes()
    assert len(new_bytes) == len(old_bytes)
    assert new_bytes == old_bytes
