"""FramePack's sigma schedule: flux time shift with mu from the context length.

The arithmetic mirrors FramePack's (float32 ``linspace``, then the shift as a tensor expression) so
that the same steps and sizes give bit-identical sigmas.
"""

from __future__ import annotations

import math

import torch


def flux_mu(context_length: int, *, exp_max: float = 7.0) -> float:
    """Linear in the context length through (256, 0.5) and (4096, 1.15), capped at ln(exp_max)."""
    x1, y1, x2, y2 = 256, 0.5, 4096, 1.15
    k = (y2 - y1) / (x2 - x1)
    b = y1 - k * x1
    return min(k * context_length + b, math.log(exp_max))


def time_shift(t: torch.Tensor, mu: float) -> torch.Tensor:
    """t -> e^mu / (e^mu + (1/t - 1)); t = 0 maps to 0."""
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** 1.0)


def context_length(latent_frames: int, latent_height: int, latent_width: int) -> int:
    """Tokens of the generated window after the 2x2 patchify (FramePack's ``T*H*W // 4``)."""
    return latent_frames * latent_height * latent_width // 4


def flow_sigmas(steps: int, context_length: int, shift: float | None = None) -> torch.Tensor:
    """``steps + 1`` float32 sigmas from 1 down to 0.

    ``shift`` overrides the length-derived mu with ``ln(shift)``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    mu = flux_mu(context_length) if shift is None else math.log(shift)
    return time_shift(torch.linspace(1, 0, steps=steps + 1), mu)
