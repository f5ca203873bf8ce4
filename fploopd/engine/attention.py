"""Attention kernels for the transformer blocks, on (B, S, H, D) tensors.

``attention(q, k, v, backend)`` runs one kernel by name (``ATTENTION_BACKENDS``); ``attend`` is what
the blocks call: the kernel behind an opaque custom op, so ``torch.compile`` neither traces into it
nor re-lays out its inputs, or cuDNN's FP8 attention with its quantisation traced (so compile fuses
the scaling into the producers). ``accel.pick_attention`` times the candidates on the GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

ATTENTION_BACKENDS = ("sdpa", "cudnn", "flash", "efficient", "math", "sage", "flash_attn", "fa4", "cudnn_fp8")


def attention(q: Tensor, k: Tensor, v: Tensor, backend: str) -> Tensor:
    """Full (unmasked) attention on (B, S, H, D) tensors; returns (B, S, H, D)."""
    if backend == "fa4":
        from flash_attn.cute import flash_attn_func  # FlashAttention 4 (CuTe DSL; SM90 and SM100 kernels)

        return flash_attn_func(q, k, v)[0]
    if backend == "flash_attn":
        try:
            from flash_attn_interface import (
                flash_attn_func,  # FlashAttention 3 (Hopper)
            )
        except ImportError:
            from flash_attn import flash_attn_func
        out = flash_attn_func(q, k, v)
        return out[0] if isinstance(out, tuple) else out
    if backend == "cudnn_fp8":
        return attend(q, k, v, backend)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if backend == "sage":
        out = _sage(q, k, v)
    elif backend == "sdpa":
        out = F.scaled_dot_product_attention(q, k, v)
    else:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        kernel = {
            "cudnn": SDPBackend.CUDNN_ATTENTION,
            "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "math": SDPBackend.MATH,
        }[backend]
        if backend == "cudnn":
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # as diffusers does for cuDNN
        with sdpa_kernel(kernel):
            out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2)


@torch.compiler.disable
def _sage(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """SageAttention (INT8 QK, fp16 PV; lossy), kept out of compiled graphs (it edits k in place)."""
    from sageattention import sageattn

    return sageattn(q, k.clone(), v, tensor_layout="HND", is_causal=False)


@torch.library.custom_op("fploopd::attention", mutates_args=())
def attention_op(q: Tensor, k: Tensor, v: Tensor, backend: str) -> Tensor:
    """``attention`` as an opaque op: under torch.compile the kernel then sees the (B, S, H, D)
    tensors the projections wrote (heads-minor strides, which cuDNN runs fastest) instead of
    copies inductor would lay out for its own SDPA lowering; returns contiguous (B, S, H, D)."""
    return attention(q, k, v, backend).contiguous()


@attention_op.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, backend: str) -> Tensor:
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


def _quant_tensor(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-tensor e4m3 quantisation: (x8, descale) with x ~= x8 * descale."""
    amax = torch.clamp(x.abs().amax().float(), min=1e-12)
    x8 = torch.clamp(x.float() * (448.0 / amax), -448.0, 448.0).to(torch.float8_e4m3fn)
    return x8, amax / 448.0


@torch.library.custom_op("fploopd::cudnn_fp8_attention", mutates_args=())
def cudnn_fp8_attention_op(q8: Tensor, k8: Tensor, v8: Tensor, dq: Tensor, dk: Tensor, dv: Tensor) -> Tensor:
    """cuDNN's FP8 flash attention (Hopper: FP8 in, FP8 out) on (B, S, H, D) e4m3 tensors with
    per-tensor descales; the output is scaled by 1/dv (|O| <= max|V|, so it cannot overflow)."""
    from fploopd.engine.accel import sdpa_fp8

    return sdpa_fp8(q8, k8, v8, dq, dk, dv)


@cudnn_fp8_attention_op.register_fake
def _(q8: Tensor, k8: Tensor, v8: Tensor, dq: Tensor, dk: Tensor, dv: Tensor) -> Tensor:
    return torch.empty(q8.shape, dtype=q8.dtype, device=q8.device)


def attend(q: Tensor, k: Tensor, v: Tensor, backend: str) -> Tensor:
    """Attention inside the blocks: the opaque op, or FP8 quantisation (traced, so compile fuses it
    into the producers) around cuDNN's FP8 kernel."""
    if backend == "cudnn_fp8":
        (q8, dq), (k8, dk), (v8, dv) = _quant_tensor(q), _quant_tensor(k), _quant_tensor(v)
        o8 = cudnn_fp8_attention_op(q8.contiguous(), k8.contiguous(), v8.contiguous(), dq, dk, dv)
        return (o8.float() * dv).to(q.dtype)
    return attention_op(q, k, v, backend)


__all__ = ["ATTENTION_BACKENDS", "attend", "attention", "attention_op", "cudnn_fp8_attention_op"]
