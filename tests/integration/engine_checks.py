"""What the variant tests of both model families check of a model on the engine
(test_gemma_variants.py, test_gemma4_variants.py): its greedy tokens against transformers',
and that batching and prefix reuse change no bit."""

from __future__ import annotations

from typing import Any

import torch

from gemma_chat.infrastructure.llm.engine.kv_cache import KVCache
from gemma_chat.infrastructure.llm.engine.text_models import TextModel


def reference_greedy(
    model: Any, prompt: torch.Tensor, steps: int
) -> tuple[list[int], torch.Tensor]:
    """transformers' greedy tokens for ``steps`` steps after ``prompt`` [1, S] (a full forward
    pass each, no cache) and the logits each step chose from: [steps, V]. With
    ``output_hidden_states=True``: without it, a Gemma 4 with shared keys and values but no
    per-layer inputs fails in transformers 5.24 itself; the outputs are the same."""
    ids = prompt
    chosen = []
    with torch.inference_mode():
        for _ in range(steps):
            logits = model(input_ids=ids, output_hidden_states=True).logits[0, -1].float()
            chosen.append(logits)
            ids = torch.cat([ids, logits.argmax().view(1, 1)], dim=1)
    return ids[0, prompt.shape[1] :].tolist(), torch.stack(chosen)


def engine_greedy(
    model: TextModel, prompt: torch.Tensor, steps: int
) -> tuple[list[int], torch.Tensor]:
    """The engine's greedy tokens for ``steps`` steps after ``prompt`` [1, S] (prefilled, then
    a decode step a token, in a float32 cache) and the logits each step chose from."""
    cache = KVCache(model.config, slots=1, dtype=torch.float32)
    slot = torch.tensor([0])
    n = prompt.shape[1]
    tokens, logits = [], []
    with torch.inference_mode():
        step = model(prompt, torch.arange(n).view(1, -1), slot, cache)[0]
        for position in range(n, n + steps):
            logits.append(step)
            tokens.append(int(step.argmax()))
            step = model(torch.tensor([[tokens[-1]]]), torch.tensor([[position]]), slot, cache)[0]
    return tokens, torch.stack(logits)


def rows_logits(
    model: TextModel, tokens: list[int], start: int, slot: int, cache: KVCache
) -> torch.Tensor:
    """Logits [V] after tokens at positions start.. in ``slot``."""
    n = len(tokens)
    return model.forward_rows(
        torch.tensor(tokens),
        torch.arange(start, start + n),
        torch.full((n,), slot),
        cache,
        [n - 1],
    )[0]


def top1_agreement(model: TextModel, prompt: list[int], tokens: list[int]) -> float:
    """The share of ``tokens`` (a reference's greedy tokens after ``prompt``) that the model's
    top token is, teacher-forced on them: prompt prefilled, then a decode step a token."""
    cache = KVCache(model.config, slots=1, dtype=model.kv_dtype)
    sequence, n = prompt + tokens, len(prompt)
    agree = 0
    with torch.inference_mode():
        logits = rows_logits(model, sequence[:n], 0, 0, cache)
        for step in range(len(tokens)):
            agree += int(logits.argmax()) == tokens[step]
            logits = rows_logits(model, [sequence[n + step]], n + step, 0, cache)
    return agree / len(tokens)


def assert_batched_rows_give_each_sequence_alone(model: TextModel) -> None:
    """Two prompts in one pass: each row's logits are the bits of its prompt alone."""
    gen = torch.Generator().manual_seed(1)
    a = torch.randint(10, 500, (30,), generator=gen).tolist()
    b = torch.randint(10, 500, (45,), generator=gen).tolist()
    together = KVCache(model.config, slots=2, dtype=model.kv_dtype)
    with torch.inference_mode():
        batched = model.forward_rows(
            torch.tensor(a + b),
            torch.cat([torch.arange(30), torch.arange(45)]),
            torch.tensor([0] * 30 + [1] * 45),
            together,
            [29, 74],
        )
        for row, tokens in enumerate((a, b)):
            alone = rows_logits(model, tokens, 0, 0, KVCache(model.config, 1, dtype=model.kv_dtype))
            assert torch.equal(batched[row], alone)


def assert_reused_prefix_gives_recomputed_bits(model: TextModel) -> None:
    """A prompt's last 15 tokens after its first 25 read back from another slot's cache: the
    bits of the whole prompt computed afresh."""
    tokens = torch.randint(10, 500, (40,), generator=torch.Generator().manual_seed(2)).tolist()
    cache = KVCache(model.config, slots=3, dtype=model.kv_dtype)
    with torch.inference_mode():
        recomputed = rows_logits(model, tokens, 0, 0, cache)
        rows_logits(model, tokens[:25], 0, 1, cache)  # the prefix, as a finished turn left it
        snapshot = cache.read(1, 25)
        cache.write(2, snapshot, 25)  # moved to another slot, as from the prefix store
        reused = rows_logits(model, tokens[25:], 25, 2, cache)
    assert torch.equal(reused, recomputed)
