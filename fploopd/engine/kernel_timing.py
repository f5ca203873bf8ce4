"""The automatic attention choice: time the registered kernels once on the device.

Candidates (``attention.attention_candidates``) are timed at FramePack's 640-bucket shape among the
SDPA kernels (cuDNN, flash, efficient) and, when installed, FlashAttention 4 (``flash-attn-4``:
1.2x cuDNN on an H200), FlashAttention 2/3 and SageAttention; lossy kernels (Sage's INT8) only
when asked for. A kernel must first agree with the math kernel on a small input.
"""

from __future__ import annotations

import torch
from loguru import logger

from fploopd.engine.attention import attention, attention_candidates, get_kernel

# FramePack's largest common case: 640x640 bucket, window 9, full 1x/2x/4x context, 40 text tokens.
DEFAULT_ATTENTION_SHAPE = (1, 18400 + 729 + 40, 24, 128)


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
            tol = 5e-2 if get_kernel(name).lossy else 1e-2
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


__all__ = ["DEFAULT_ATTENTION_SHAPE", "pick_attention"]
