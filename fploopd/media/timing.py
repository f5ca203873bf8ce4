"""Frame rates as exact fractions, and per-frame durations in whole units that add up exactly."""

from __future__ import annotations

from fractions import Fraction


def as_rate(fps: float | Fraction) -> Fraction:
    """A frame rate as a fraction: 30 -> 30/1, 29.97 -> 2997/100, Fraction(30000, 1001) unchanged."""
    rate = fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1001)
    if not rate > 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    return rate


def frame_durations(count: int, fps: float | Fraction, unit_s: Fraction) -> list[int]:
    """Durations of ``count`` frames in whole ``unit_s`` units, rounded cumulatively.

    Each frame ends at round((i + 1) / fps / unit), so the error never adds up: at 30 fps in
    milliseconds the frames take 33, 34, 33, 33, 34, ... and 30 frames take exactly 1000 ms.
    """
    step = 1 / (as_rate(fps) * unit_s)
    ends = [round((i + 1) * step) for i in range(count)]
    return [end - start for start, end in zip([0, *ends[:-1]], ends, strict=True)]
