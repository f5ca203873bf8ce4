"""What a video file holds, read from its headers (and its first frame), with the limits applied."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.container
import av.video.stream

from fploopd.errors import InputError
from fploopd.media.limits import MediaLimits, check_file, mpx

# Demuxers a dropped file may reach: playlists (hls, concat) would open other files, so they are out.
VIDEO_DEMUXERS = "mov,mp4,matroska,webm,avi,gif,apng,mpegts,flv,mpeg,ogg,webm_dash_manifest"
_OPEN_OPTIONS = {"format_whitelist": VIDEO_DEMUXERS, "protocol_whitelist": "file"}


@dataclass(frozen=True)
class VideoInfo:
    """A video's shape in display orientation. ``frames`` is exact when ``frames_exact``, else estimated."""

    path: Path
    width: int
    height: int
    fps: Fraction
    frames: int
    duration: float  # seconds
    codec: str
    rotation: int = 0  # degrees counter-clockwise the stored picture is turned for display
    frames_exact: bool = True


@contextlib.contextmanager
def open_video(path: Path) -> Iterator[av.container.InputContainer]:
    """Open ``path`` for demuxing; FFmpeg's errors become an InputError naming the file."""
    name = Path(path).name
    try:
        container = av.open(str(path), "r", options=dict(_OPEN_OPTIONS))
    except av.FFmpegError as e:
        raise InputError(f"{name} is not a readable video ({_reason(e)})", file=name) from None
    try:
        yield container
    except av.FFmpegError as e:
        raise InputError(f"{name} is corrupt or truncated ({_reason(e)})", file=name) from None
    finally:
        container.close()


def video_stream(container: av.container.InputContainer, name: str) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise InputError(f"{name} has no video stream", file=name)
    return container.streams.video[0]


def stream_rate(stream: av.video.stream.VideoStream, name: str) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or rate <= 0:
        raise InputError(f"{name} declares no frame rate", file=name)
    return Fraction(rate)


def probe_video(path: Path, limits: MediaLimits) -> VideoInfo:
    """Read the headers and the first frame; refuse files over ``limits`` before any full decode."""
    path = Path(path)
    name = path.name
    check_file(path, limits.max_video_bytes)
    with open_video(path) as container:
        stream = video_stream(container, name)
        ctx = stream.codec_context
        w, h = ctx.width, ctx.height
        if w <= 0 or h <= 0:
            raise InputError(f"{name} declares no frame size", file=name)
        if w * h > limits.max_video_pixels:
            raise InputError(
                f"{name} is {w}x{h} = {mpx(w * h)} per frame; the limit is {mpx(limits.max_video_pixels, limit=True)}",
                file=name,
            )
        rate = stream_rate(stream, name)
        declared = _duration(container, stream)
        frames_exact = bool(stream.frames)
        frames = stream.frames or (round(declared * rate) if declared else 0)
        duration = declared if declared is not None else float(frames / rate)
        check_length(name, limits, seconds=duration, frames=frames)
        first = next(container.decode(stream), None)
        if first is None:
            raise InputError(f"{name} has no decodable frames", file=name)
        rotation = frame_rotation(first)
        if rotation % 180:
            w, h = h, w
        return VideoInfo(path, w, h, rate, frames, duration, ctx.name, rotation, frames_exact)


def check_length(name: str, limits: MediaLimits, *, seconds: float, frames: int) -> None:
    if seconds > limits.max_video_seconds:
        raise InputError(f"{name} lasts {seconds:.1f} s; the limit is {limits.max_video_seconds:g} s", file=name)
    if frames > limits.max_video_frames:
        raise InputError(f"{name} has {frames} frames; the limit is {limits.max_video_frames}", file=name)


def frame_rotation(frame: av.VideoFrame) -> int:
    """Display rotation in multiples of 90 degrees, counter-clockwise (phones store portrait this way)."""
    try:
        return (round(frame.rotation / 90) * 90) % 360
    except (AttributeError, TypeError, ValueError):  # no display matrix
        return 0


def _duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def _reason(e: av.FFmpegError) -> str:
    return e.strerror or type(e).__name__
