"""FP8 (e4m3) linears on Hopper/Ada via ``torch._scaled_mm``: weights quantised once per output
channel (or per tensor), activations per token (or per tensor) at each call.

Opt-in: it moves outputs beyond bf16 rounding (docs/perf-notes.md has the measured deviation).
The quantised weights live in ``weights.PreparedWeights``, never on the modules.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# Linears left in bf16 under FP8: the per-block modulation (M = 1: weight-bandwidth bound, tiny).
FP8_SKIP = ("norm1.linear", "norm1_context.linear", "norm.linear")
FP8_GRANULARITIES = ("row", "tensor")
E4M3_MAX = 448.0

# A linear's FP8 form: (w8 [out, in] e4m3, scale fp32 of shape [1, out] (per output channel;
# activations then get per-token scales) or [] (per tensor)).
Fp8Weight = tuple[Tensor, Tensor]


def fp8_supported(device: torch.device | str) -> bool:
    device = torch.device(device)
    if device.type != "cuda":
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


def block_fp8_linears(block: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The linears of one block that FP8 replaces (all but the modulation), by name in the block."""
    return [
        (name, mod) for name, mod in block.named_modules() if isinstance(mod, nn.Linear) and not name.endswith(FP8_SKIP)
    ]


def fp8_linears(transformer: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The linears of the block stack that FP8 replaces (all but the modulation)."""
    out = []
    for stack in ("transformer_blocks", "single_transformer_blocks"):
        for i, block in enumerate(getattr(transformer, stack)):
            out += [(f"{stack}.{i}.{name}", mod) for name, mod in block_fp8_linears(block)]
    return out


def check_granularity(granularity: str) -> None:
    if granularity not in FP8_GRANULARITIES:
        raise ValueError(f"granularity must be 'row' or 'tensor', not {granularity!r}")


@torch.no_grad()
def quantize_weight(w: Tensor, granularity: str) -> Fp8Weight:
    """``w`` as e4m3 with its scale: "row" (per output channel; activations per token: CUTLASS
    rowwise GEMM) or "tensor" (one scale each: cuBLASLt)."""
    check_granularity(granularity)
    w = w.float()
    if granularity == "tensor":
        scale = torch.clamp(w.abs().amax(), min=1e-12) / E4M3_MAX  # 0-dim
    else:
        scale = torch.clamp(w.abs().amax(dim=1, keepdim=True), min=1e-12) / E4M3_MAX  # (out, 1)
    w8 = torch.clamp(w / scale, -E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).contiguous()
    return w8, (scale if scale.ndim == 0 else scale.t().contiguous())  # (1, out) for scale_b


def fp8_linear(x: Tensor, w8: Tensor, w_scale: Tensor, bias: Tensor | None) -> Tensor:
    """``F.linear`` with e4m3 operands: per-row (token) dynamic activation scales, per-output-channel
    weight scales quantised once; accumulates in fp32 on the tensor cores, returns ``x.dtype``.
    Kept free of host syncs: it runs inside compiled regions."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    if w_scale.numel() == 1:  # per-tensor scales (cuBLASLt's FP8 GEMM)
        amax = x2.abs().amax().float()
    else:  # per-token x per-channel (CUTLASS rowwise FP8 GEMM)
        amax = x2.abs().amax(dim=1, keepdim=True).float()
    x_scale = torch.clamp(amax, min=1e-12) / E4M3_MAX
    x8 = torch.clamp(x2.float() / x_scale, -E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    out = torch._scaled_mm(
        x8, w8.t(), scale_a=x_scale, scale_b=w_scale, out_dtype=x.dtype, use_fast_accum=x.is_cuda
    )
    if bias is not None:
        out = out + bias  # outside the GEMM: every PyTorch build accepts it; compile fuses it
    return out.reshape(*shape[:-1], out.shape[-1])


__all__ = [
    "FP8_GRANULARITIES",
    "FP8_SKIP",
    "Fp8Weight",
    "block_fp8_linears",
    "fp8_linear",
    "fp8_linears",
    "fp8_supported",
    "quantize_weight",
]
