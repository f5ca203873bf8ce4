"""FramePack's UniPC sampler for flow matching, as a pure function over a ``denoise`` callable.

UniPC (Zhao et al. 2023) in FramePack's flow-matching form: a predictor-corrector on x0
predictions in lambda = -log(sigma). The multistep order is min(3, len(sigmas) - 2), one model call
per step, and the result is the x0 prediction at the last nonzero sigma (sigma = 0 is never
evaluated). The tensor operations follow FramePack's order so results agree to float32 rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``denoise(x, sigma)``: ``sigma`` is a 1-D tensor of batch size; returns the x0 prediction."""

StepCallback = Callable[[dict[str, Any]], None]


def _expand(v: torch.Tensor, dims: int) -> torch.Tensor:
    return v[(...,) + (None,) * (dims - 1)]


def _unipc_coefficients(
    rks: torch.Tensor, hh: torch.Tensor, order: int, variant: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (R, b, B_h): the linear system whose solutions weight the multistep corrections."""
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    if variant == "bh1":
        b_h = hh
    elif variant == "bh2":
        b_h = torch.expm1(hh)
    else:
        raise ValueError(f"variant must be 'bh1' or 'bh2', got {variant!r}")
    rows, b = [], []
    factorial_i = 1
    for i in range(1, order + 1):
        rows.append(torch.pow(rks, i - 1))
        b.append(h_phi_k * factorial_i / b_h)
        factorial_i *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial_i
    return torch.stack(rows), torch.tensor(b, device=rks.device, dtype=rks.dtype), b_h


def unipc_update(
    denoise: Denoise,
    x: torch.Tensor,
    model_prev: list[torch.Tensor],
    t_prev: list[torch.Tensor],
    t: torch.Tensor,
    order: int,
    variant: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One UniPC step from ``t_prev[-1]`` to ``t``: predictor, one model call, corrector."""
    dims = x.dim()
    t_prev_0 = t_prev[-1]
    lambda_prev_0 = -torch.log(t_prev_0)
    lambda_t = -torch.log(t)
    model_prev_0 = model_prev[-1]
    h = lambda_t - lambda_prev_0

    rks, d1s = [], []
    for i in range(1, order):
        lambda_prev_i = -torch.log(t_prev[-(i + 1)])
        rk = ((lambda_prev_i - lambda_prev_0) / h)[0]
        rks.append(rk)
        d1s.append((model_prev[-(i + 1)] - model_prev_0) / rk)
    rks.append(torch.ones((), device=x.device, dtype=t.dtype))
    rks_t = torch.stack(rks)

    hh = -h[0]
    r_mat, b, b_h = _unipc_coefficients(rks_t, hh, order, variant)

    half = torch.tensor([0.5], device=x.device, dtype=t.dtype)
    if d1s:
        d1s_t = torch.stack(d1s, dim=1)
        rhos_p = half if order == 2 else torch.linalg.solve(r_mat[:-1, :-1], b[:-1])
        pred_res = torch.tensordot(d1s_t, rhos_p, dims=([1], [0]))
    else:
        d1s_t = None
        pred_res = 0
    rhos_c = half if order == 1 else torch.linalg.solve(r_mat, b)

    x_t_ = _expand(t / t_prev_0, dims) * x - _expand(torch.expm1(hh), dims) * model_prev_0
    x_t = x_t_ - _expand(b_h, dims) * pred_res
    model_t = denoise(x_t, t)

    corr_res = torch.tensordot(d1s_t, rhos_c[:-1], dims=([1], [0])) if d1s_t is not None else 0
    d1_t = model_t - model_prev_0
    x_t = x_t_ - _expand(b_h, dims) * (corr_res + rhos_c[-1] * d1_t)
    return x_t, model_t


def sample_unipc(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    variant: str = "bh1",
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Integrate from ``sigmas[0]`` to the last nonzero sigma; return the final x0 prediction.

    ``callback`` gets ``{"i", "x", "denoised", "sigma"}`` after each of the ``len(sigmas) - 1``
    steps; it may raise to stop sampling (cancellation).
    """
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"variant must be 'bh1' or 'bh2', got {variant!r}")
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError("sigmas must be a 1-D tensor of at least two values")
    order = min(3, len(sigmas) - 2)
    model_prev: list[torch.Tensor] = []
    t_prev: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        vec_t = sigmas[i].expand(x.shape[0])
        if i == 0:
            model_prev = [denoise(x, vec_t)]
            t_prev = [vec_t]
        else:
            x, model_x = unipc_update(denoise, x, model_prev, t_prev, vec_t, min(i, order), variant)
            model_prev.append(model_x)
            t_prev.append(vec_t)
        model_prev = model_prev[-order:] if order > 0 else model_prev[-1:]
        t_prev = t_prev[-order:] if order > 0 else t_prev[-1:]
        if callback is not None:
            callback({"i": i, "x": x, "denoised": model_prev[-1], "sigma": sigmas[i]})
    return model_prev[-1]
