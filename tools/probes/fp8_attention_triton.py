"""An FP8 (e4m3) flash attention for Hopper in Triton, measured by ``tools/probes/fp8_attention_kernels.py``.

Kept as a probe, not in fploopd: it ran at 640 TFLOP/s (7.0 ms at FramePack's 640-bucket shape),
slower than FlashAttention 4's bf16 kernel, so it did not pay (docs/perf-notes.md, variant 17).

Full (unmasked) attention on (B, S, H, D = 128) tensors. ``quantize`` turns bf16 q, k, v into e4m3
with one scale per (batch, head), as FlashAttention 3's FP8 forward takes them, and lays v out
key-minor ((B, H, D, S'), S' padded to 16), the layout Hopper's FP8 tensor cores read the second
GEMM's operand in. ``attention_fp8`` runs the kernel: QK^T in FP8 with the descales and the softmax
scale folded into one multiplier; the probabilities, exp2(s - m + 8) in [0, 256], are cast to e4m3
for the PV GEMM (the +8 keeps small probabilities out of e4m3's subnormals, FlashAttention 3's
recipe); the row sum is kept in fp32 from the unrounded values; each block's PV product is added
to an fp32 accumulator, so the tensor cores' reduced-precision FP8 accumulation spans only one
block. Lossy like every FP8 attention: its error matched FlashAttention 3's FP8 forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.tools.tensor_descriptor import TensorDescriptor

E4M3_MAX = 448.0
HEAD_DIM = 128


@dataclass(frozen=True)
class KernelConfig:
    block_m: int = 128
    block_n: int = 128
    num_warps: int = 8
    num_stages: int = 3
    warp_specialize: bool = False


DEFAULT_CONFIG = KernelConfig()


def quantize_heads(x: Tensor) -> tuple[Tensor, Tensor]:
    """(B, S, H, D) -> e4m3 of the same shape and (B, H) float32 descales (x ~= x8 * descale)."""
    amax = x.abs().amax(dim=(1, 3)).float().clamp(min=1e-12)
    x8 = (x.float() * (E4M3_MAX / amax)[:, None, :, None]).clamp(-E4M3_MAX, E4M3_MAX)
    return x8.to(torch.float8_e4m3fn), amax / E4M3_MAX


def transpose_keys_minor(v8: Tensor) -> Tensor:
    """(B, S, H, D) e4m3 -> (B, H, D, S') with S' = S rounded up to 16 (TMA's 16-byte row pitch);
    the padding is zero."""
    s = v8.shape[1]
    pad = -s % 16
    vt = v8.permute(0, 2, 3, 1)
    if pad:
        vt = torch.nn.functional.pad(vt.view(torch.uint8), (0, pad)).view(torch.float8_e4m3fn)
    return vt.contiguous()


def quantize(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """bf16 (B, S, H, D) q, k, v -> (q8, k8, vt8, scales) for ``attention_fp8``; ``scales`` is
    (B, H, 2): the QK^T multiplier (descales x softmax scale x log2 e) and v's descale."""
    (q8, dq), (k8, dk), (v8, dv) = quantize_heads(q), quantize_heads(k), quantize_heads(v)
    qk = dq * dk * (math.log2(math.e) / math.sqrt(q.shape[-1]))
    return q8, k8, transpose_keys_minor(v8), torch.stack((qk, dv), dim=-1).contiguous()


@triton.jit
def _block(acc, l_i, m_i, q, k_desc, v_desc, scale, row_k, col_k, row_v, n0, seqlen,
           BLOCK_N: tl.constexpr, MASKED: tl.constexpr):
    k = k_desc.load([row_k + n0, col_k])
    s = tl.dot(q, k.T)
    if MASKED:
        cols = n0 + tl.arange(0, BLOCK_N)
        s = tl.where((cols < seqlen)[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1) * scale)
    p = tl.math.exp2(s * scale - (m_new - 8.0)[:, None])  # in [0, 256]
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    vt = v_desc.load([row_v, n0])
    acc = acc * alpha[:, None] + tl.dot(p.to(tl.float8e4nv), vt.T)
    return acc, l_i, m_new

@triton.jit
def attn_fwd_fp8(q_desc, k_desc, v_desc, scales, out, seqlen, full, heads, stride_ob, stride_os, stride_oh,
                 HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 WARP_SPECIALIZE: tl.constexpr):
    m0 = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b, h = bh // heads, bh % heads
    scale = tl.load(scales + bh * 2)
    v_descale = tl.load(scales + bh * 2 + 1)
    q = q_desc.load([b * seqlen + m0, h * HEAD_D])
    row_k, col_k, row_v = b * seqlen, h * HEAD_D, bh * HEAD_D
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_D], tl.float32)
    for n0 in tl.range(0, full, BLOCK_N, warp_specialize=WARP_SPECIALIZE):
        acc, l_i, m_i = _block(acc, l_i, m_i, q, k_desc, v_desc, scale, row_k, col_k, row_v, n0, seqlen,
                               BLOCK_N, False)
    if full < seqlen:
        acc, l_i, m_i = _block(acc, l_i, m_i, q, k_desc, v_desc, scale, row_k, col_k, row_v, full, seqlen,
                               BLOCK_N, True)
    o = acc * (v_descale / l_i)[:, None]
    rows = m0 + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, HEAD_D)
    ptrs = out + b * stride_ob + rows[:, None] * stride_os + h * stride_oh + cols[None, :]
    tl.store(ptrs, o.to(out.dtype.element_ty), mask=(rows < seqlen)[:, None])


def attention_fp8(q8: Tensor, k8: Tensor, vt8: Tensor, scales: Tensor, out_dtype: torch.dtype = torch.bfloat16,
                  config: KernelConfig = DEFAULT_CONFIG) -> Tensor:
    """Attention of ``quantize``'s outputs: contiguous (B, S, H, 128) e4m3 q8 and k8, (B, H, 128, S')
    vt8 and (B, H, 2) scales; returns (B, S, H, 128) in ``out_dtype``. Hopper (sm90) only."""
    b, s, h, d = q8.shape
    if d != HEAD_DIM:
        raise ValueError(f"FP8 attention needs head dim {HEAD_DIM}, got {d}")
    bm, bn = config.block_m, config.block_n
    q_desc = TensorDescriptor.from_tensor(q8.reshape(b * s, h * d), [bm, d])
    k_desc = TensorDescriptor.from_tensor(k8.reshape(b * s, h * d), [bn, d])
    v_desc = TensorDescriptor.from_tensor(vt8.reshape(b * h * d, vt8.shape[-1]), [d, bn])
    out = torch.empty((b, s, h, d), dtype=out_dtype, device=q8.device)
    grid = (-(-s // bm), b * h)
    attn_fwd_fp8[grid](q_desc, k_desc, v_desc, scales, out, s, s // bn * bn, h, out.stride(0), out.stride(1), out.stride(2),
                    HEAD_D=d, BLOCK_M=bm, BLOCK_N=bn, WARP_SPECIALIZE=config.warp_specialize, num_warps=config.num_warps, num_stages=config.num_stages)
    return out


def fp8_attention(q: Tensor, k: Tensor, v: Tensor, config: KernelConfig = DEFAULT_CONFIG) -> Tensor:
    """bf16 (B, S, H, 128) in and out: ``quantize`` then ``attention_fp8``."""
    q8, k8, vt8, scales = quantize(q, k, v)
    return attention_fp8(q8, k8, vt8, scales, q.dtype, config)
