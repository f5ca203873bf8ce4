"""GPU optimisations for a loaded FramePack transformer (and the VAE), each automatic with overrides.

``optimize(transformer, device=...)`` decides and records (on the transformer) what
``forward.TransformerRunner`` should use:

- attention kernel: timed once on the device at FramePack's 640-bucket shape among the SDPA kernels
  (cuDNN, flash, efficient) and, when installed, FlashAttention 4 (``flash-attn-4``: 1.2x cuDNN on
  an H200), FlashAttention 2/3 and SageAttention; lossy kernels (Sage's INT8) only when
  ``allow_lossy``;
- regional ``torch.compile`` of the two block functions (one graph per block kind, shared by all 60
  blocks; fuses norms, modulation, rope and residuals around the GEMMs);
- FP8 (e4m3) linears on Hopper/Ada via ``torch._scaled_mm``: weights quantised once per output
  channel, activations per token; opt-in (it moves outputs beyond bf16 rounding: see
  docs/perf-notes.md for the measured deviation).

``optimize_vae`` compiles the VAE decoder (channels-last weights), for long-lived workers.

CUDA graphs are not used: a forward is ~0.7-0.95 s of ~1000 large kernels and the profile shows
the GPU busy 99% of it (docs/perf-notes.md). ``BlockStreamer`` is the low-VRAM mode: block weights
live in pinned host memory and stream to the GPU one block ahead of use on a side stream.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import torch
from loguru import logger
from torch import Tensor, nn

from fploopd.engine.attention import attention
from fploopd.engine.forward import (
    ACCEL_ATTR,
    FP8_ATTR,
    FUSED_ADDED_QKV,
    FUSED_QKV,
    FUSED_QKVM,
    BlockFns,
    double_block,
    single_block,
)

# FramePack's largest common case: 640x640 bucket, window 9, full 1x/2x/4x context, 40 text tokens.
DEFAULT_ATTENTION_SHAPE = (1, 18400 + 729 + 40, 24, 128)
LOSSY_BACKENDS = ("sage",)
_COMPILED_ATTR = "_fploopd_compiled_forward"
# Linears left in bf16 under FP8: the per-block modulation (M = 1: weight-bandwidth bound, tiny).
_FP8_SKIP = ("norm1.linear", "norm1_context.linear", "norm.linear")


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def fp8_supported(device: torch.device | str) -> bool:
    device = torch.device(device)
    if device.type != "cuda":
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


def fa4_would_help(device: torch.device | str) -> bool:
    """A GPU that FlashAttention 4 has kernels for (Hopper, Blackwell), whether or not it is installed."""
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] in (9, 10, 11)


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a dotted name whose parent is missing
        return False


def _has_triton() -> bool:
    return _has_module("triton")


# ---------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------


def attention_candidates(device: torch.device, allow_lossy: bool = False) -> list[str]:
    if device.type != "cuda":
        return ["sdpa"]
    names = ["cudnn", "flash", "efficient", "sdpa"]
    if _has_module("flash_attn_interface") or _has_module("flash_attn.flash_attn_interface"):
        names.append("flash_attn")
    if _has_module("flash_attn.cute"):
        names.append("fa4")
    if allow_lossy and importlib.util.find_spec("sageattention"):
        names.append("sage")
    return names


def pick_attention(
    device: torch.device | str,
    dtype: torch.dtype = torch.bfloat16,
    *,
    shape: tuple[int, int, int, int] = DEFAULT_ATTENTION_SHAPE,
    allow_lossy: bool = False,
    repeats: int = 3,
) -> tuple[str, dict[str, float | str]]:
    """Fastest attention kernel that runs and agrees with the math kernel on this device.

    Returns (name, {candidate: median ms or the error}). On the CPU: "sdpa" without timing."""
    device = torch.device(device)
    candidates = attention_candidates(device, allow_lossy)
    if device.type != "cuda":
        return "sdpa", {}
    gen = torch.Generator(device=device).manual_seed(0)
    small = [torch.randn((1, 512, shape[2], shape[3]), generator=gen, device=device, dtype=dtype) for _ in range(3)]
    ref = attention(*(t.float() for t in small), "math")
    big = [torch.randn(shape, generator=gen, device=device, dtype=dtype) for _ in range(3)]
    results: dict[str, float | str] = {}
    for name in candidates:
        try:
            out = attention(*small, name).float()
            err = ((out - ref).norm() / ref.norm()).item()
            tol = 5e-2 if name in LOSSY_BACKENDS else 1e-2
            if not err < tol:
                results[name] = f"rejected: relative error {err:.2e}"
                continue
            attention(*big, name)  # warm-up (cuDNN builds its plan here)
            times = []
            for _ in range(repeats):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                attention(*big, name)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            results[name] = sorted(times)[len(times) // 2]
        except Exception as exc:  # noqa: BLE001 - a kernel that does not support this GPU/shape/dtype
            results[name] = f"failed: {type(exc).__name__}: {str(exc)[:120]}"
    timed = {k: v for k, v in results.items() if isinstance(v, float)}
    best = min(timed, key=timed.__getitem__) if timed else "sdpa"
    logger.info("attention kernels (ms at {}): {} -> {}", shape, results, best)
    return best, results


# ---------------------------------------------------------------------------------------------
# Compile
# ---------------------------------------------------------------------------------------------


def _configure_dynamo() -> None:
    import torch._dynamo

    cfg = torch._dynamo.config
    # One entry per (block kind, attention kernel, fp8, text length); the default limit of 8 is
    # reached by a benchmark that tries every variant in one process.
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), 64))


@functools.cache
def compiled_blocks(mode: str | None = None) -> BlockFns:
    """The block functions under torch.compile, created once per process (per mode) and shared by
    runners. Block modules are arguments, so dynamo lifts their weights as graph inputs: one graph
    serves all blocks of a kind (regional compilation). ``mode``: torch.compile's (e.g.
    "max-autotune-no-cudagraphs", which lets inductor fuse elementwise epilogues into Triton GEMMs)."""
    _configure_dynamo()
    return torch.compile(double_block, mode=mode), torch.compile(single_block, mode=mode)


# ---------------------------------------------------------------------------------------------
# FP8
# ---------------------------------------------------------------------------------------------


def fp8_linears(transformer: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The linears of the block stack that FP8 replaces (all but the modulation)."""
    out = []
    for stack in ("transformer_blocks", "single_transformer_blocks"):
        for name, mod in getattr(transformer, stack).named_modules():
            if isinstance(mod, nn.Linear) and not name.endswith(_FP8_SKIP):
                out.append((f"{stack}.{name}", mod))
    return out


def _quantize(w: Tensor, granularity: str) -> tuple[Tensor, Tensor]:
    w = w.float()
    if granularity == "tensor":
        scale = torch.clamp(w.abs().amax(), min=1e-12) / 448.0  # 0-dim
    else:
        scale = torch.clamp(w.abs().amax(dim=1, keepdim=True), min=1e-12) / 448.0  # (out, 1)
    w8 = torch.clamp(w / scale, -448.0, 448.0).to(torch.float8_e4m3fn).contiguous()
    return w8, (scale if scale.ndim == 0 else scale.t().contiguous())  # (1, out) for scale_b


@torch.no_grad()
def quantize_fp8(transformer: nn.Module, granularity: str = "row") -> int:
    """Store e4m3 weights next to each linear's bf16 weight (and next to fused projections).

    ``granularity``: "row" (per output channel; activations per token: CUTLASS rowwise GEMM) or
    "tensor" (one scale each: cuBLASLt). The bf16 weights stay (the stock forward and the non-FP8
    path still use them); callers short of memory can drop them with ``drop_bf16_weights``."""
    if granularity not in ("row", "tensor"):
        raise ValueError(f"granularity must be 'row' or 'tensor', not {granularity!r}")
    count = 0
    for _, lin in fp8_linears(transformer):
        setattr(lin, FP8_ATTR, _quantize(lin.weight, granularity))
        count += 1
    for owner, attr in _fused_slots(transformer):
        fused = getattr(owner, attr, None)
        if fused is not None:
            setattr(owner, attr + "_fp8", _quantize(fused[0], granularity))
    return count


def remove_fp8(transformer: nn.Module) -> None:
    for _, lin in fp8_linears(transformer):
        if hasattr(lin, FP8_ATTR):
            delattr(lin, FP8_ATTR)
    for owner, attr in _fused_slots(transformer):
        if hasattr(owner, attr + "_fp8"):
            delattr(owner, attr + "_fp8")


# ---------------------------------------------------------------------------------------------
# Fused projections
# ---------------------------------------------------------------------------------------------


def _fused_slots(transformer: nn.Module) -> list[tuple[nn.Module, str]]:
    slots: list[tuple[nn.Module, str]] = []
    for block in transformer.transformer_blocks:
        slots += [(block.attn, FUSED_QKV), (block.attn, FUSED_ADDED_QKV)]
    for block in transformer.single_transformer_blocks:
        slots.append((block, FUSED_QKVM))
    return slots


@torch.no_grad()
def _fuse(owner: nn.Module, attr: str, linears: Sequence[nn.Linear]) -> None:
    """One weight for ``linears`` that read the same input; their own weights become views into it,
    so no memory is added and the stock forward keeps working."""
    weight = torch.cat([lin.weight for lin in linears], dim=0)
    bias = torch.cat([lin.bias for lin in linears], dim=0) if all(lin.bias is not None for lin in linears) else None
    row = 0
    for lin in linears:
        n = lin.out_features
        lin.weight.data = weight[row : row + n]
        if bias is not None:
            lin.bias.data = bias[row : row + n]
        row += n
    setattr(owner, attr, (weight, bias))


def fuse_projections(transformer: nn.Module) -> int:
    """Fuse q|k|v (both streams of the double blocks) and q|k|v|mlp-in (single blocks): fewer, wider
    GEMMs that read their input once. Do it after the model is on its device (``.to()`` would
    copy the views apart)."""
    count = 0
    for block in transformer.transformer_blocks:
        a = block.attn
        _fuse(a, FUSED_QKV, (a.to_q, a.to_k, a.to_v))
        _fuse(a, FUSED_ADDED_QKV, (a.add_q_proj, a.add_k_proj, a.add_v_proj))
        count += 2
    for block in transformer.single_transformer_blocks:
        a = block.attn
        _fuse(block, FUSED_QKVM, (a.to_q, a.to_k, a.to_v, block.proj_mlp))
        count += 1
    return count


def unfuse_projections(transformer: nn.Module) -> None:
    """Back to one GEMM per linear (the weights stay views of the fused storage: same memory)."""
    for owner, attr in _fused_slots(transformer):
        for name in (attr, attr + "_fp8"):
            if hasattr(owner, name):
                delattr(owner, name)


def drop_bf16_weights(transformer: nn.Module) -> int:
    """Free the high-precision weights of FP8 linears (the stock forward no longer works after this)."""
    freed = 0
    for _, lin in fp8_linears(transformer):
        if hasattr(lin, FP8_ATTR):
            freed += lin.weight.numel() * lin.weight.element_size()
            lin.weight = nn.Parameter(torch.empty(0, dtype=lin.weight.dtype, device=lin.weight.device), requires_grad=False)
    return freed


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


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
) -> dict[str, Any]:
    """Apply and record the optimisations for ``transformer`` on ``device``; returns what was applied.

    ``None`` / ``"auto"`` decide from the device: compile when Triton is there (CUDA), attention by
    timing, projections unfused, FP8 off unless asked (and only where the GPU has FP8 tensor cores).
    ``attention="cudnn_fp8"`` adds cuDNN's FP8 attention (lossy; needs nvidia-cudnn-frontend).
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
        compile = device.type == "cuda" and _has_triton()
    applied["compile"] = bool(compile)

    if fuse is None:
        fuse = False  # measured on an H200: no gain under compile (docs/perf-notes.md); kept as an option
    if fuse:
        applied["fused_projections"] = fuse_projections(transformer)
    applied["fuse"] = bool(fuse)

    if fp8 is None:
        fp8 = False
    if fp8 and not fp8_supported(device):
        applied["notes"].append("fp8 asked for but this device has no FP8 tensor cores: kept bf16")
        fp8 = False
    if fp8:
        applied["fp8_linears"] = quantize_fp8(transformer, fp8_granularity)
        applied["fp8_granularity"] = fp8_granularity
    applied["fp8"] = bool(fp8)

    setattr(transformer, ACCEL_ATTR, applied)
    logger.info("transformer optimisations: {}", {k: v for k, v in applied.items() if k != "attention_ms"})
    return applied


def optimize_vae(vae: nn.Module, device: torch.device | str, *, compile: bool | None = None) -> dict[str, Any]:
    """Compile the VAE decoder (and lay its weights out channels-last) on a CUDA device.

    Measured on an H200 (docs/benchmarks.md): one section's decode 3.78 s -> 1.88 s, within fp16
    rounding of the stock decode; eager channels-last alone is 1.6x slower, so it only comes with
    the compile. The first decode of each new shape compiles (about a minute), which is why the
    daemon's long-lived workers use it and one-shot commands do not. ``restore_vae`` undoes it."""
    device = torch.device(device)
    if compile is None:
        compile = device.type == "cuda" and _has_triton()
    if device.type != "cuda" or not compile:
        return {"compile": False}
    vae.to(memory_format=torch.channels_last_3d)
    decoder = vae.decoder
    compiled = decoder.__dict__.get(_COMPILED_ATTR)
    if compiled is None:  # one compiled callable per module: a new one would recompile every shape
        _configure_dynamo()
        compiled = _guarded(decoder.forward, torch.compile(decoder.forward), "VAE decoder")
        decoder.__dict__[_COMPILED_ATTR] = compiled
    decoder.forward = compiled
    return {"compile": True, "channels_last_3d": True}


def restore_vae(vae: nn.Module) -> None:
    """The stock eager decoder in the default memory format (a no-op when not optimised)."""
    vae.decoder.__dict__.pop("forward", None)
    vae.to(memory_format=torch.contiguous_format)


def _guarded(eager: Callable[..., Any], compiled: Callable[..., Any], what: str) -> Callable[..., Any]:
    """``compiled``, falling back to ``eager`` for good after its first failure: an unattended
    worker should lose speed, not jobs, when the compiler meets a shape it cannot handle."""
    failed = False

    def call(*args: Any, **kwargs: Any) -> Any:
        nonlocal failed
        if not failed:
            try:
                return compiled(*args, **kwargs)
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as exc:  # noqa: BLE001 - any compiler error: run eagerly instead
                failed = True
                logger.warning("compiled {} failed ({}: {}); running it eagerly from now on", what,
                               type(exc).__name__, str(exc)[:200])
        return eager(*args, **kwargs)

    return call


# ---------------------------------------------------------------------------------------------
# Low VRAM: stream blocks from pinned host memory
# ---------------------------------------------------------------------------------------------


class BlockStreamer:
    """Keeps the weights of the transformer blocks in pinned host memory and copies each block to
    the GPU on a side stream ``prefetch`` blocks ahead of its use; a block's GPU copy is released
    as soon as it has run. At most ``prefetch + 2`` blocks are resident (~0.7 GB each at full size).

    The rest of the transformer (embedders, refiner, output) stays on the GPU (~0.8 GB)."""

    def __init__(self, stacks: Sequence[nn.ModuleList], device: torch.device | str, prefetch: int = 2) -> None:
        self.device = torch.device(device)
        self.prefetch = max(1, prefetch)
        self.stream = torch.cuda.Stream(self.device)
        self._host: dict[int, list[tuple[nn.Parameter | Tensor, Tensor]]] = {}
        for stack in stacks:
            for block in stack:
                self._host[id(block)] = [(p, _pinned_copy(p.data)) for p in _tensors(block)]
                for p, host in self._host[id(block)]:
                    p.data = host
        torch.cuda.empty_cache()
        self.bytes_per_pass = sum(h.numel() * h.element_size() for v in self._host.values() for _, h in v)

    def _load(self, block: nn.Module) -> torch.cuda.Event:
        with torch.cuda.stream(self.stream):
            for p, host in self._host[id(block)]:
                p.data = host.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        return event

    def _release(self, block: nn.Module, compute: torch.cuda.Stream) -> None:
        for p, host in self._host[id(block)]:
            p.data.record_stream(compute)  # memory returns to the pool only once compute is past it
            p.data = host

    def run(self, blocks: Sequence[nn.Module], fn: Callable[[nn.Module, Any], Any], state: Any) -> Any:
        compute = torch.cuda.current_stream(self.device)
        n = len(blocks)
        ready: dict[int, torch.cuda.Event] = {}
        done: deque[torch.cuda.Event] = deque()
        for i, block in enumerate(blocks):
            for j in range(i, min(n, i + 1 + self.prefetch)):
                if j not in ready:
                    ready[j] = self._load(blocks[j])
            compute.wait_event(ready.pop(i))
            state = fn(block, state)
            finished = torch.cuda.Event()
            finished.record(compute)
            self._release(block, compute)
            done.append(finished)
            if len(done) > self.prefetch:
                done.popleft().synchronize()  # back-pressure: keep the host from running ahead
        return state

    def restore(self) -> None:
        """Put every block back on the GPU (leaving low-VRAM mode)."""
        for params in self._host.values():
            for p, host in params:
                p.data = host.to(self.device)


def _tensors(module: nn.Module) -> list[Tensor]:
    return [*module.parameters(), *module.buffers()]


def _pinned_copy(t: Tensor) -> Tensor:
    host = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=True)
    host.copy_(t, non_blocking=False)
    return host


def enable_low_vram(transformer: nn.Module, device: torch.device | str, prefetch: int = 2) -> BlockStreamer:
    """Blocks to pinned host memory (streamed per use), everything else of ``transformer`` on ``device``."""
    device = torch.device(device)
    t0 = time.perf_counter()
    unfuse_projections(transformer)  # fused weights would stay resident; stream the plain linears
    remove_fp8(transformer)
    streamer = BlockStreamer([transformer.transformer_blocks, transformer.single_transformer_blocks], device, prefetch)
    for name, child in transformer.named_children():
        if name not in ("transformer_blocks", "single_transformer_blocks"):
            child.to(device)
    logger.info(
        "low-VRAM mode: {:.1f} GB of block weights in pinned host memory ({:.1f} s)",
        streamer.bytes_per_pass / 1e9,
        time.perf_counter() - t0,
    )
    return streamer


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


__all__ = [
    "BlockStreamer",
    "compiled_blocks",
    "cudnn_fp8_available",
    "drop_bf16_weights",
    "enable_low_vram",
    "fp8_supported",
    "fuse_projections",
    "optimize",
    "optimize_vae",
    "pick_attention",
    "quantize_fp8",
    "remove_fp8",
    "restore_vae",
    "sdpa_fp8",
    "unfuse_projections",
]
