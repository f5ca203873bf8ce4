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
