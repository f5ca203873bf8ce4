"""Attention kernels for the transformer blocks, on (B, S, H, D) tensors, behind a registry.

Each kernel is registered by name (``KERNELS``) with the function that runs it and a check of
whether it can run on a device (installed package, GPU generation). ``attention(q, k, v, name)``
runs one kernel; ``attend`` is what the blocks call: the kernel behind an opaque custom op, so
``torch.compile`` neither traces into it nor re-lays out its inputs, or cuDNN's FP8 attention with
its quantisation traced (so compile fuses the scaling into the producers).
``kernel_timing.pick_attention`` times the candidates on the GPU.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

AttentionFn = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class AttentionKernel:
    """One attention kernel: ``run(q, k, v)`` on (B, S, H, D) tensors, and where it can run."""

    name: str
    run: AttentionFn
    available: Callable[[torch.device], bool]
    lossy: bool = False  # outputs beyond bf16 rounding: timed only when asked for
    timed: bool = True  # a candidate of the automatic choice


KERNELS: dict[str, AttentionKernel] = {}
# The automatic choice tries candidates in this order (the first of equal times wins).
TIMING_ORDER = ("cudnn", "flash", "efficient", "sdpa", "flash_attn", "fa4", "sage")


def register(kernel: AttentionKernel) -> AttentionKernel:
    KERNELS[kernel.name] = kernel
    return kernel


def get_kernel(name: str) -> AttentionKernel:
    try:
        return KERNELS[name]
    except KeyError:
        raise ValueError(f"attention must be one of {tuple(KERNELS)}, not {name!r}") from None


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a dotted name whose parent is missing
        return False


def _cuda(device: torch.device) -> bool:
    return device.type == "cuda"


def fa4_would_help(device: torch.device | str) -> bool:
    """A GPU that FlashAttention 4 has kernels for (Hopper, Blackwell), whether or not it is installed."""
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] in (9, 10, 11)


def attention_candidates(device: torch.device, allow_lossy: bool = False) -> list[str]:
    """Kernels the automatic choice times on ``device``: the SDPA kernels, and the optional ones
    that are installed (lossy ones only when ``allow_lossy``)."""
    names = []
    for name in TIMING_ORDER:
        kernel = KERNELS[name]
        if kernel.timed and (allow_lossy or not kernel.lossy) and kernel.available(device):
            names.append(name)
    return names


def attention(q: Tensor, k: Tensor, v: Tensor, backend: str) -> Tensor:
    """Full (unmasked) attention on (B, S, H, D) tensors with kernel ``backend``; returns (B, S, H, D)."""
    return get_kernel(backend).run(q, k, v)


# ---------------------------------------------------------------------------------------------
# The kernels
# ---------------------------------------------------------------------------------------------


def _sdpa(kernel: Any | None, contiguous: bool = False) -> AttentionFn:
    """PyTorch's SDPA on (B, H, S, D) views, with one of its kernels forced (``None``: its own pick)."""

    def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if kernel is None:
            return F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
        from torch.nn.attention import sdpa_kernel

        if contiguous:
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # as diffusers does for cuDNN
        with sdpa_kernel(kernel):
            out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2)

    return run


def _fa4(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    from flash_attn.cute import flash_attn_func  # FlashAttention 4 (CuTe DSL; SM90 and SM100 kernels)

    return flash_attn_func(q, k, v)[0]


def _flash_attn(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    try:
        from flash_attn_interface import flash_attn_func  # FlashAttention 3 (Hopper)
    except ImportError:
        from flash_attn import flash_attn_func
    out = flash_attn_func(q, k, v)
    return out[0] if isinstance(out, tuple) else out


def _sage(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    return _sage_hnd(q, k, v).transpose(1, 2)


@torch.compiler.disable
def _sage_hnd(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """SageAttention (INT8 QK, fp16 PV; lossy), kept out of compiled graphs (it edits k in place)."""
    from sageattention import sageattn

    return sageattn(q, k.clone(), v, tensor_layout="HND", is_causal=False)


def _cudnn_fp8(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return attend(q, k, v, "cudnn_fp8")


def _register_kernels() -> None:
    from torch.nn.attention import SDPBackend

    def always(_: torch.device) -> bool:
        return True

    for kernel in (
        AttentionKernel("sdpa", _sdpa(None), always),
        AttentionKernel("cudnn", _sdpa(SDPBackend.CUDNN_ATTENTION, contiguous=True), _cuda),
        AttentionKernel("flash", _sdpa(SDPBackend.FLASH_ATTENTION), _cuda),
        AttentionKernel("efficient", _sdpa(SDPBackend.EFFICIENT_ATTENTION), _cuda),
        AttentionKernel("math", _sdpa(SDPBackend.MATH), always, timed=False),  # the reference
        AttentionKernel("sage", _sage, lambda d: _cuda(d) and _has_module("sageattention"), lossy=True),
        AttentionKernel(
            "flash_attn",
            _flash_attn,
            lambda d: _cuda(d) and (_has_module("flash_attn_interface") or _has_module("flash_attn.flash_attn_interface")),
        ),
        AttentionKernel("fa4", _fa4, lambda d: _cuda(d) and _has_module("flash_attn.cute")),
        # Lossy and chosen by name only (docs/perf-notes.md has its deviation).
        AttentionKernel("cudnn_fp8", _cudnn_fp8, lambda d: _cuda(d) and cudnn_fp8_available(), lossy=True, timed=False),
    ):
        register(kernel)


# ---------------------------------------------------------------------------------------------
# The ops the blocks call
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# FP8 attention: cuDNN's FP8 SDPA through cudnn-frontend (optional ``nvidia-cudnn-frontend``)
#
# On Hopper cuDNN runs FP8 attention with FP8 output only; inputs are per-tensor scaled e4m3, the
# softmax probabilities are scaled by 448 before their own e4m3 cast (cuDNN's recipe), the output
# is scaled by ``1/dv`` (|O| <= max|V|: no overflow). One graph per shape and device, built on
# first use. Lossy: docs/perf-notes.md has the measured deviation.
# ---------------------------------------------------------------------------------------------

_GRAPHS: dict[tuple, Any] = {}
_HANDLES: dict[int, Any] = {}


def cudnn_fp8_available() -> bool:
    try:
        import cudnn  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return False
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (9, 0)


def _graph(shape: tuple[int, int, int, int], device: torch.device) -> Any:
    import cudnn

    key = (shape, device.index)
    hit = _GRAPHS.get(key)
    if hit is not None:
        return hit
    b, s, h, d = shape
    handle = _HANDLES.get(device.index)
    if handle is None:
        handle = _HANDLES[device.index] = cudnn.create_handle()
    dims, strides = [b, h, s, d], [s * h * d, d, h * d, 1]  # (B, S, H, D) memory seen as (B, H, S, D)
    f8, f32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
    g = cudnn.pygraph(io_data_type=f8, intermediate_data_type=f32, compute_data_type=f32, handle=handle)
    q, k, v = (g.tensor(name=n, dim=dims, stride=strides, data_type=f8) for n in ("q", "k", "v"))
    scalars = [g.tensor(name=n, dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], data_type=f32)
               for n in ("dq", "dk", "dv", "ds", "ss", "so")]
    o, _stats, amax_s, amax_o = g.sdpa_fp8(q, k, v, *scalars, is_inference=True, attn_scale=1.0 / math.sqrt(d),
                                           name="sdpa_fp8")
    o.set_output(True).set_dim(dims).set_stride(strides).set_data_type(f8)
    for t in (amax_s, amax_o):
        t.set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(f32)
    g.validate()
    g.build_operation_graph()
    g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    g.check_support()
    g.build_plans()
    one = torch.ones(1, 1, 1, 1, device=device)
    entry = {
        "graph": g, "handle": handle, "tensors": (q, k, v, *scalars, o, amax_s, amax_o),
        "workspace": torch.empty(g.get_workspace_size(), device=device, dtype=torch.uint8),
        "ds": one / 448.0, "ss": one * 448.0,
        "amax": (torch.zeros(1, 1, 1, 1, device=device), torch.zeros(1, 1, 1, 1, device=device)),
    }
    _GRAPHS[key] = entry
    return entry


def sdpa_fp8(q8: Tensor, k8: Tensor, v8: Tensor, dq: Tensor, dk: Tensor, dv: Tensor) -> Tensor:
    """(B, S, H, D) e4m3 in and out; ``out * dv`` is the attention output."""
    import cudnn

    q8, k8, v8 = q8.contiguous(), k8.contiguous(), v8.contiguous()
    e = _graph(tuple(q8.shape), q8.device)
    cudnn.set_stream(handle=e["handle"], stream=torch.cuda.current_stream(q8.device).cuda_stream)
    q, k, v, tdq, tdk, tdv, tds, tss, tso, o, amax_s, amax_o = e["tensors"]
    out = torch.empty_like(q8)
    r = lambda t: t.reshape(1, 1, 1, 1).float().contiguous()
    pack = {q: q8, k: k8, v: v8, tdq: r(dq), tdk: r(dk), tdv: r(dv), tds: e["ds"], tss: e["ss"],
            tso: r(1.0 / dv), o: out, amax_s: e["amax"][0], amax_o: e["amax"][1]}
    e["graph"].execute(pack, e["workspace"], handle=e["handle"])
    return out


_register_kernels()
ATTENTION_BACKENDS = tuple(KERNELS)

__all__ = [
    "ATTENTION_BACKENDS",
    "KERNELS",
    "AttentionKernel",
    "attend",
    "attention",
    "attention_candidates",
    "attention_op",
    "cudnn_fp8_attention_op",
    "cudnn_fp8_available",
    "fa4_would_help",
    "get_kernel",
    "register",
    "sdpa_fp8",
]
