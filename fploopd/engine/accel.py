"""GPU optimisations for a loaded FramePack transformer, each automatic with overrides.

``optimize(transformer, device=...)`` decides what ``forward.TransformerRunner`` should use on
``device`` and returns it as an ``Acceleration``: the runner's options (``options.RunnerOptions``),
the weights it prepared (``weights.PreparedWeights``) and a record of what was applied for
manifests and the benchmark. The jobs it composes live in their own modules:

- attention kernel: timed once on the device (``kernel_timing.pick_attention`` over the
  ``attention`` registry); lossy kernels (Sage's INT8) only when ``allow_lossy_attention``;
- regional ``torch.compile`` of the two block functions (``compile``);
- fused projections and FP8 (e4m3) linears on Hopper/Ada (``weights``, ``fp8``); FP8 is opt-in
  (it moves outputs beyond bf16 rounding: see docs/perf-notes.md for the measured deviation).

The low-VRAM block streaming is ``streaming.enable_low_vram``; the VAE decoder's compile is
``vae_accel.VaeAccel``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from loguru import logger
from torch import nn

from fploopd.engine.attention import cudnn_fp8_available
from fploopd.engine.compile import has_triton
from fploopd.engine.fp8 import fp8_supported
from fploopd.engine.kernel_timing import DEFAULT_ATTENTION_SHAPE, pick_attention
from fploopd.engine.options import RunnerOptions
from fploopd.engine.weights import PreparedWeights


@dataclass
class Acceleration:
    """What ``optimize`` chose and prepared for one transformer on one device."""

    options: RunnerOptions
    weights: PreparedWeights
    applied: dict[str, Any] = field(default_factory=dict)  # for manifests and the benchmark's JSON


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def optimize(
    transformer: nn.Module,
    *,
    device: torch.device | str,
    compile: bool | None = None,
    fp8: bool | None = False,
    attention: str = "auto",
    fuse: bool | None = None,
    fp8_granularity: str = "row",
    allow_lossy_attention: bool = False,
    weights: PreparedWeights | None = None,
) -> Acceleration:
    """Decide and prepare the optimisations for ``transformer`` on ``device``.

    ``None`` / ``"auto"`` decide from the device: compile when Triton is there (CUDA), attention by
    timing, projections unfused, FP8 off unless asked (and only where the GPU has FP8 tensor cores).
    ``attention="cudnn_fp8"`` adds cuDNN's FP8 attention (lossy; needs nvidia-cudnn-frontend).
    ``weights``: prepare into these (the transformer's existing ones) instead of new ones.
    Measured on an H200 (docs/benchmarks.md): compile with FlashAttention 4 0.71x of diffusers'
    forward (about 0.77x with cuDNN's attention), + FP8 linears 0.60x; fused projections and
    SageAttention did not pay."""
    device = torch.device(device)
    dtype = next(transformer.parameters()).dtype
    applied: dict[str, Any] = {"device": device_name(device), "notes": []}
    if attention == "cudnn_fp8" and not cudnn_fp8_available():
        applied["notes"].append("cudnn_fp8 attention needs nvidia-cudnn-frontend and a Hopper GPU: timed choice instead")
        attention = "auto"
    if attention == "auto":
        cfg = transformer.config
        shape = (1, DEFAULT_ATTENTION_SHAPE[1], cfg.num_attention_heads, cfg.attention_head_dim)
        attention, timings = pick_attention(device, dtype, shape=shape, allow_lossy=allow_lossy_attention)
        applied["attention_ms"] = timings
    applied["attention"] = attention

    if compile is None:
        compile = device.type == "cuda" and has_triton()
    applied["compile"] = bool(compile)

    weights = weights if weights is not None else PreparedWeights(transformer)
    if fuse is None:
        fuse = False  # measured on an H200: no gain under compile (docs/perf-notes.md); kept as an option
    if fuse:
        applied["fused_projections"] = weights.fuse()
    applied["fuse"] = bool(fuse)

    if fp8 is None:
        fp8 = False
    if fp8 and not fp8_supported(device):
        applied["notes"].append("fp8 asked for but this device has no FP8 tensor cores: kept bf16")
        fp8 = False
    if fp8:
        applied["fp8_linears"] = weights.quantize_fp8(fp8_granularity)
        applied["fp8_granularity"] = fp8_granularity
    applied["fp8"] = bool(fp8)

    options = RunnerOptions(attention=attention, compile=bool(compile), fp8=bool(fp8))
    logger.info("transformer optimisations: {}", {k: v for k, v in applied.items() if k != "attention_ms"})
    return Acceleration(options=options, weights=weights, applied=applied)


__all__ = ["Acceleration", "device_name", "optimize"]
