"""GPTQ rounding of a weight to 4-bit blocks: the output's error, not the weight's, made small.

Rounding each weight to its nearest level (``q8.quantize_weight4``) leaves errors that add up
in the product ``x W^T`` as they fall. GPTQ (Frantar et al., 2022) rounds the columns of W one
after the other and moves each column's rounding error onto the columns not yet rounded, through
the inverse of the inputs' covariance H = E[x x^T]: the later columns absorb what the earlier
ones got wrong, as far as the inputs' correlations allow. Each block of 32 columns gets its scale
when its turn comes, from its values as the earlier blocks' errors left them, chosen as
``quantize_weight4`` chooses it (importance-weighted); the block's values are then rounded at
that scale column by column.

Rows are independent, so the work is [N, K] matrix updates with K = 640 for the embedded
model's output head (H is 640 x 640): done once, at conversion.
"""

from __future__ import annotations

import torch

from gemma_chat.infrastructure.llm.engine.q8 import BLOCK, Q8Kernels, quantize_weight4

__all__ = ["DAMPING", "gptq_weight4", "inverse_factor"]

# Added to H's diagonal, times its mean: keeps the inverse tame where the inputs barely vary
# (GPTQ's usual 1 %).
DAMPING = 0.01


def inverse_factor(covariance: torch.Tensor, *, damping: float = DAMPING) -> torch.Tensor:
    """The upper Cholesky factor of H^-1 [K, K] float32 (H: ``covariance``, damped): row i
    holds what rounding column i passes on. It depends on H alone: a weight rounded in pieces
    of rows computes it once and gives it to each piece (``gptq_weight4``'s ``cholesky``)."""
    k = covariance.shape[0]
    h = covariance.double().clone()
    dead = torch.diagonal(h) <= 0  # an input that is always zero: its column does not matter
    h[dead, dead] = 1.0
    h += damping * torch.diagonal(h).mean() * torch.eye(k, dtype=h.dtype)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
    factor: torch.Tensor = torch.linalg.cholesky(inverse, upper=True)
    return factor.float()


def gptq_weight4(
    kernels: Q8Kernels,
    weight: torch.Tensor,
    covariance: torch.Tensor,
    importance: torch.Tensor | None = None,
    *,
    damping: float = DAMPING,
    cholesky: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float -> int8 [N, K] in -8..7 and float32 scales [N, K/32], as
    ``quantize_weight4`` returns them, rounded so that ``x W^T``'s error is small for inputs of
    covariance ``covariance`` [K, K] (E[x x^T]). ``importance`` [K] weighs each block's scale
    choice (default: H's diagonal). ``cholesky``: ``inverse_factor(covariance, damping=damping)``
    when the caller has it already (computed here otherwise)."""
    w = weight.detach().float()
    n, k = w.shape
    if k % BLOCK or covariance.shape != (k, k):
        raise ValueError(f"a [{n}, {k}] weight needs K a multiple of {BLOCK} and H [{k}, {k}]")
    if importance is None:
        importance = torch.diagonal(covariance).float()
    weights = importance.float().clamp_min(1e-12).contiguous()
    u = inverse_factor(covariance, damping=damping) if cholesky is None else cholesky
    columns = w.T.contiguous()  # [K, N]: a column is a contiguous row here
    q = torch.empty((k, n), dtype=torch.int8)
    scales = torch.empty((k // BLOCK, n), dtype=torch.float32)
    for start in range(0, k, BLOCK):
        end = start + BLOCK
        block = columns[start:end]  # a view: the errors are moved into it in place
        _, chosen = quantize_weight4(kernels, block.T, weights[start:end])
        scale = chosen[:, 0]
        scales[start // BLOCK] = scale
        inverse_scale = torch.where(scale != 0, 1.0 / scale, torch.zeros_like(scale))
        errors = torch.empty_like(block)
        for i in range(BLOCK):
            values = torch.clamp(torch.round(block[i] * inverse_scale), -8, 7)
            q[start + i] = values.to(torch.int8)
            errors[i] = (block[i] - values * scale) / u[start + i, start + i]
            if i + 1 < BLOCK:
                block[i + 1 :] -= u[start + i, start + i + 1 : end, None] * errors[i][None, :]
        if end < k:
            columns[end:] -= u[start:end, end:].T @ errors
    return q.T.contiguous(), scales.T.contiguous()
