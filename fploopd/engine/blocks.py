"""The transformer blocks as plain functions of their module: the math of diffusers'
``HunyuanVideoTransformerBlock`` / ``HunyuanVideoSingleTransformerBlock`` and
``HunyuanVideoAttnProcessor2_0``.

Everything a block function uses comes in as an argument: the block module, its prepared weights
(``weights.BlockWeights``: fused projections, FP8 copies), the attention kernel's name, whether to
use FP8 and the GELU epilogue. So ``compile.compiled_blocks`` compiles each function once for all
blocks of its kind, and the stock forward (the benchmark's baseline) stays diffusers' own code.
Kept free of host syncs: these run inside compiled regions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fploopd.engine.attention import attend
from fploopd.engine.fp8 import Fp8Weight, fp8_linear
from fploopd.engine.weights import FUSED_ADDED_QKV, FUSED_QKV, FUSED_QKVM, BlockWeights

_QKV = ("attn.to_q", "attn.to_k", "attn.to_v")
_ADDED_QKV = ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")


def linear(lin: nn.Linear, x: Tensor, q: Fp8Weight | None = None) -> Tensor:
    """``lin(x)``, with the FP8 weight ``q`` when given."""
    if q is not None:
        return fp8_linear(x, q[0], q[1], lin.bias)
    return F.linear(x, lin.weight, lin.bias)


def _fp8_of(w: BlockWeights, fp8: bool, name: str) -> Fp8Weight | None:
    return w.fp8.get(name) if fp8 else None


def fused_linear(w: BlockWeights, name: str, x: Tensor, fp8: bool) -> Tensor | None:
    """One GEMM for the projections fused under ``name`` (None when they are not fused)."""
    fused = w.fused.get(name)
    if fused is None:
        return None
    weight, bias = fused
    if fp8:
        q = w.fused_fp8.get(name)
        if q is not None:
            return fp8_linear(x, q[0], q[1], bias)
    return F.linear(x, weight, bias)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """diffusers' ``apply_rotary_emb(x, (cos, sin), sequence_dim=1)`` for x of shape (B, S, H, D)."""
    cos = cos[None, :, None, :]
    sin = sin[None, :, None, :]
    x_real, x_imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    x_rotated = torch.stack([-x_imag, x_real], dim=-1).flatten(3)
    return (x.float() * cos + x_rotated.float() * sin).to(x.dtype)


def linear_gelu(lin: nn.Linear, x: Tensor, q: Fp8Weight | None = None, *, epilogue: bool = True) -> Tensor:
    """``gelu(lin(x), approximate="tanh")``. In bf16 on CUDA with ``epilogue``, one cuBLASLt GEMM
    with a GELU epilogue (``_addmm_activation``, which inductor leaves whole): it saves a read and a
    write of the 4x-wide MLP activations. Not on the CPU, where that op's GELU is the exact (erf)
    one. FP8 (``q``) keeps the separate GELU, which compile fuses into the next quantisation."""
    if epilogue and x.is_cuda and q is None and lin.bias is not None:
        x2 = x.reshape(-1, x.shape[-1])
        return torch._addmm_activation(lin.bias, x2, lin.weight.t(), use_gelu=True).view(*x.shape[:-1], -1)
    return F.gelu(linear(lin, x, q), approximate="tanh")


def joint_out(lin: nn.Linear, a: Tensor, m: Tensor, q: Fp8Weight | None = None, *, epilogue: bool = True) -> Tensor:
    """``lin(cat([a, m], -1))``; unless FP8 (whose per-token scales span the whole row), as two
    GEMMs over the column halves of the weight, so the (tokens x 15,360) concatenation is never
    written. Goes with ``epilogue``: the two change the same MLP path together."""
    if not epilogue or q is not None:
        return linear(lin, torch.cat([a, m], dim=-1), q)
    ka = a.shape[-1]
    out = F.linear(a, lin.weight[:, :ka], lin.bias)
    m2 = m.reshape(-1, m.shape[-1])
    return torch.addmm(out.reshape(-1, out.shape[-1]), m2, lin.weight[:, ka:].t()).view(out.shape)


def _qkv(
    attn: nn.Module, w: BlockWeights, x: Tensor, fp8: bool, added: bool = False, fused: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v (B, S, H, D) after the qk norms; ``fused``: the q|k|v output of a fused GEMM."""
    if added:
        lins, names = (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj), _ADDED_QKV
        norms = (attn.norm_added_q, attn.norm_added_k)
    else:
        lins, names, norms = (attn.to_q, attn.to_k, attn.to_v), _QKV, (attn.norm_q, attn.norm_k)
    if fused is None:
        fused = fused_linear(w, FUSED_ADDED_QKV if added else FUSED_QKV, x, fp8)
    if fused is not None:
        sizes = [lin.out_features for lin in lins]
        q, k, v = (t.unflatten(2, (attn.heads, -1)) for t in fused[..., : sum(sizes)].split(sizes, dim=-1))
    else:
        q, k, v = (
            linear(lin, x, _fp8_of(w, fp8, name)).unflatten(2, (attn.heads, -1)) for lin, name in zip(lins, names)
        )
    if norms[0] is not None:
        q = norms[0](q)
    if norms[1] is not None:
        k = norms[1](k)
    return q, k, v


def _feed_forward(ff: nn.Module, prefix: str, w: BlockWeights, x: Tensor, fp8: bool, epilogue: bool) -> Tensor:
    act = ff.net[0]  # diffusers GELU(proj, approximate="tanh"); net[1] is dropout (identity in eval)
    hidden = linear_gelu(act.proj, x, _fp8_of(w, fp8, f"{prefix}.net.0.proj"), epilogue=epilogue)
    return linear(ff.net[2], hidden, _fp8_of(w, fp8, f"{prefix}.net.2"))


def double_block(
    block: nn.Module,
    w: BlockWeights,
    hidden: Tensor,
    context: Tensor,
    temb: Tensor,
    cos: Tensor,
    sin: Tensor,
    backend: str,
    fp8: bool,
    epilogue: bool,
) -> tuple[Tensor, Tensor]:
    """One dual-stream block; ``hidden`` is the latent stream (all of it gets rope), ``context`` the
    image+text conditioning stream."""
    n = hidden.shape[1]
    shift, scale, gate, shift_mlp, scale_mlp, gate_mlp = block.norm1.linear(F.silu(temb)).chunk(6, dim=1)
    c_shift, c_scale, c_gate, c_shift_mlp, c_scale_mlp, c_gate_mlp = block.norm1_context.linear(
        F.silu(temb)
    ).chunk(6, dim=1)
    x = block.norm1.norm(hidden) * (1 + scale[:, None]) + shift[:, None]
    c = block.norm1_context.norm(context) * (1 + c_scale[:, None]) + c_shift[:, None]

    attn = block.attn
    q, k, v = _qkv(attn, w, x, fp8)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    cq, ck, cv = _qkv(attn, w, c, fp8, added=True)
    out = attend(torch.cat([q, cq], 1), torch.cat([k, ck], 1), torch.cat([v, cv], 1), backend)
    out = out.flatten(2, 3).to(q.dtype)
    a = linear(attn.to_out[0], out[:, :n], _fp8_of(w, fp8, "attn.to_out.0"))
    ca = linear(attn.to_add_out, out[:, n:], _fp8_of(w, fp8, "attn.to_add_out"))

    hidden = hidden + a * gate.unsqueeze(1)
    context = context + ca * c_gate.unsqueeze(1)
    x = block.norm2(hidden) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
    c = block.norm2_context(context) * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None]
    x = _feed_forward(block.ff, "ff", w, x, fp8, epilogue)
    c = _feed_forward(block.ff_context, "ff_context", w, c, fp8, epilogue)
    hidden = hidden + gate_mlp.unsqueeze(1) * x
    context = context + c_gate_mlp.unsqueeze(1) * c
    return hidden, context


def single_block(
    block: nn.Module,
    w: BlockWeights,
    x: Tensor,
    temb: Tensor,
    cos: Tensor,
    sin: Tensor,
    n_latent: int,
    backend: str,
    fp8: bool,
    epilogue: bool,
) -> Tensor:
    """One single-stream block on the joined sequence ``[latent (n_latent, with rope) | conditioning]``."""
    shift, scale, gate = block.norm.linear(F.silu(temb)).chunk(3, dim=1)
    nx = block.norm.norm(x) * (1 + scale[:, None]) + shift[:, None]
    attn = block.attn
    fused = fused_linear(w, FUSED_QKVM, nx, fp8)
    if fused is not None:
        mlp = block.act_mlp(fused[..., -block.proj_mlp.out_features :])
    else:
        mlp = linear_gelu(block.proj_mlp, nx, _fp8_of(w, fp8, "proj_mlp"), epilogue=epilogue)
    q, k, v = _qkv(attn, w, nx, fp8, fused=fused)
    q = torch.cat([apply_rope(q[:, :n_latent], cos, sin), q[:, n_latent:]], dim=1)
    k = torch.cat([apply_rope(k[:, :n_latent], cos, sin), k[:, n_latent:]], dim=1)
    out = attend(q, k, v, backend).flatten(2, 3).to(q.dtype)

    out = gate.unsqueeze(1) * joint_out(block.proj_out, out, mlp, _fp8_of(w, fp8, "proj_out"), epilogue=epilogue)
    return out + x


BlockFns = tuple[Callable[..., tuple[Tensor, Tensor]], Callable[..., Tensor]]
EAGER_BLOCKS: BlockFns = (double_block, single_block)

__all__ = [
    "EAGER_BLOCKS",
    "BlockFns",
    "apply_rope",
    "double_block",
    "fused_linear",
    "joint_out",
    "linear",
    "linear_gelu",
    "single_block",
]
