"""Decode a video into uint8 (T, H, W, 3) RGB frames, optionally at another frame rate.

Resampling to a target ``fps`` picks, for each output time k / fps (k = 0, 1, ...), the source
frame whose timestamp is nearest (the earlier one on a tie), measured from the first frame; the
output covers the source's span, first timestamp to last timestamp plus one frame, so 2 s at
24 fps become 60 frames at 30 fps. This handles variable frame rate sources too, because it
works from each frame's own timestamp. Frames are never blended.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from loguru import logger

from fploopd.errors import InputError
from fploopd.media.limits import MediaLimits, human_bytes
from fploopd.media.probe import check_length, frame_rotation, open_video, probe_video, stream_rate, video_stream
from fploopd.media.resize import resize_center_crop
from fploopd.media.timing import as_rate


def read_video(
    path: Path,
    limits: MediaLimits,
    *,
    fps: float | Fraction | None = None,
    max_frames: int | None = None,
    first: int | None = None,
    last: int | None = None,
    size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, float]:
    """Decode ``path``; return (frames uint8 (T, H, W, 3), fps).

    ``fps``: resample to this rate (see the module doc); None keeps every decoded frame and reports
    the stream's average rate. ``first`` / ``last``: keep only the first / last N output frames
    (``first`` stops decoding early; ``last`` holds only N frames at any time). ``max_frames``:
    refuse (InputError) a video with more output frames than this. ``size``: (height, width) to
    resize-and-center-crop each frame to as it is decoded, which also bounds memory.
    Frames come upright: a display rotation in the file is applied.
    """
    if first is not None and last is not None:
        raise ValueError("pass first or last, not both")
    for label, value in (("first", first), ("last", last), ("max_frames", max_frames)):
        if value is not None and value < 1:
            raise ValueError(f"{label} must be at least 1, got {value}")
    path = Path(path)
    name = path.name
    info = probe_video(path, limits)
    rate = info.fps if fps is None else as_rate(fps)

    expected = info.frames if fps is None else math.ceil(info.duration * rate)
    if max_frames is not None and expected > max_frames:
        raise InputError(f"{name} has {expected} frames at {float(rate):g} fps; the limit is {max_frames}", file=name)
    keep = min(x for x in (expected, first, last) if x is not None)
    out_h, out_w = size if size is not None else (info.height, info.width)
    _check_memory(name, limits, keep, out_h, out_w)

    def to_array(frame: av.VideoFrame) -> np.ndarray:
        arr: np.ndarray = frame.to_ndarray(format="rgb24", src_color_range=frame.color_range)
        k = frame_rotation(frame) // 90
        if k:
            arr = np.ascontiguousarray(np.rot90(arr, k))
        return arr if size is None else resize_center_crop(arr, out_h, out_w)

    # ``last`` holds decoded frames (converted only if they survive); the rest convert at once.
    tail: deque[av.VideoFrame] = deque(maxlen=last)
    kept: list[np.ndarray] = []
    with open_video(path) as container:
        stream = video_stream(container, name)
        stream.thread_type = "AUTO"
        timed = _timestamps(container.decode(stream), stream_rate(stream, name), name, limits)
        chosen = (f for _, f, _ in timed) if fps is None else _nearest(timed, rate)
        count = 0
        frame_limit = min(limits.max_video_frames, max_frames or limits.max_video_frames)
        for frame in chosen:
            count += 1
            if count > frame_limit:  # the header undercounted
                raise InputError(
                    f"{name} has more than {frame_limit} frames at {float(rate):g} fps; the limit is {frame_limit}",
                    file=name,
                )
            if last:
                tail.append(frame)
                continue
            kept.append(to_array(frame))
            if len(kept) > keep:  # the header undercounted: hold the memory bound anyway
                _check_memory(name, limits, len(kept), out_h, out_w)
            if first is not None and count >= first:
                break
        kept.extend(to_array(frame) for frame in tail)
    if not kept:
        raise InputError(f"{name} has no decodable frames", file=name)
    logger.debug("read {}: {} of {} frames at {:g} fps", name, len(kept), count, float(rate))
    return np.stack(kept), float(rate)


def _timestamps(
    frames: Iterator[av.VideoFrame], rate: Fraction, name: str, limits: MediaLimits
) -> Iterator[tuple[float, av.VideoFrame, float]]:
    """(seconds from the first frame, frame, its duration); enforces the limits on what is really there."""
    start: float | None = None
    prev = -math.inf
    for index, frame in enumerate(frames):
        t = frame.time if frame.time is not None else index / rate
        if start is None:
            start = t
        t -= start
        check_length(name, limits, seconds=t, frames=index + 1)
        if t <= prev:  # a repeated or out-of-order timestamp: keep the first frame given for it
            continue
        prev = t
        dur = float(frame.duration * frame.time_base) if frame.duration and frame.time_base else float(1 / rate)
        yield t, frame, dur


def _nearest(timed: Iterator[tuple[float, av.VideoFrame, float]], rate: Fraction) -> Iterator[av.VideoFrame]:
    """For each output time k / rate, the frame with the nearest timestamp (streaming, two frames held)."""
    k = 0
    prev: tuple[float, av.VideoFrame, float] | None = None
    for t, frame, dur in timed:
        if prev is not None:
            while (tk := float(k / rate)) < t:
                yield prev[1] if tk - prev[0] <= t - tk else frame
                k += 1
        prev = (t, frame, dur)
    if prev is None:
        return
    end = prev[0] + prev[2]
    total = max(1, round(end * rate))
    while k < total:
        yield prev[1]
        k += 1


def _check_memory(name: str, limits: MediaLimits, frames: int, height: int, width: int) -> None:
    need = frames * height * width * 3
    if need > limits.max_decoded_bytes:
        raise InputError(
            f"{name}: {frames} frames of {width}x{height} need {human_bytes(need)} decoded; "
            f"the limit is {human_bytes(limits.max_decoded_bytes)} (use a shorter clip or a smaller size)",
            file=name,
        )
