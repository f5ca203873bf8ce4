"""Timing and memory helpers: medians after warm-up, device-synchronised, peak memory per variant."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Measurement:
    times: list[float]
    peak_gib: float | None
    value: Any = None  # the last call's return value (for deviations)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def measure(fn: Callable[[], Any], device: torch.device, *, repeats: int, warmup: int) -> Measurement:
    """Run ``fn`` ``warmup`` times, then time ``repeats`` runs (host clock around a device sync: the
    timed regions are whole forwards or sections, far longer than the clock's resolution)."""
    reset_peak(device)
    value = None
    for _ in range(warmup):
        value = fn()
    sync(device)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        value = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return Measurement(times, peak_gib(device), value)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def deviation(out: torch.Tensor | None, ref: torch.Tensor | None) -> tuple[float | None, float | None]:
    """(max abs, mean abs) of ``out - ref`` in float32."""
    if out is None or ref is None:
        return None, None
    d = (out.float() - ref.float().to(out.device)).abs()
    return d.max().item(), d.mean().item()


def kernel_ms(
    fn: Callable[[], Any], *, repeats: int, warmup: int = 1, between: Callable[[], Any] | None = None
) -> float:
    """Median milliseconds of ``fn`` on the current CUDA device, each call timed between two CUDA
    events (kernels of a few milliseconds, where a host clock around a sync would add its own
    overhead). ``between`` runs untimed before each timed call (say GEMMs that hold the clocks at
    what a forward runs at)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        if between is not None:
            between()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)
