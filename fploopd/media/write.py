"""Encode frames to files with PyAV: H.264 MP4 for delivery, and the shared encoder loop.

Every frame gets pts = i in a 1/fps time base, so the file has exactly the frames given at exactly
the rate given. RGB is converted with the BT.709 matrix to limited range and tagged so, which is
what players assume for video; reading the file back with ``read_video`` converts it back the same
way.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import cast

import av
import av.container
import av.video.stream
import numpy as np
from loguru import logger

from fploopd.fsutil import atomic_path
from fploopd.media.frames import check_frames
from fploopd.media.probe import VideoInfo
from fploopd.media.timing import as_rate

# Encoder -> the format's codec name, as probe_video reports it.
_CODEC_NAMES = {"libx264": "h264", "prores_ks": "prores"}
_BT709 = 1  # AVCOL_SPC_BT709 / AVCOL_PRI_BT709 / AVCOL_TRC_BT709
_MPEG_RANGE = 1  # AVCOL_RANGE_MPEG (limited)


def write_mp4(
    path: Path, frames: np.ndarray, fps: float | Fraction, crf: int = 16, *, preset: str = "medium"
) -> VideoInfo:
    """Write H.264 (libx264, yuv420p, ``crf``) with +faststart, atomically. Width and height must be even."""
    check_frames(frames)
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 yuv420p needs even dimensions, got {w}x{h}")
    if not 0 <= crf <= 51:
        raise ValueError(f"crf must be in 0..51, got {crf}")
    return encode_video(
        Path(path),
        frames,
        fps,
        codec="libx264",
        pix_fmt="yuv420p",
        container_format="mp4",
        options={"crf": str(crf), "preset": preset},
        mux_options={"movflags": "+faststart"},
    )


def encode_video(
    path: Path,
    frames: np.ndarray,
    fps: float | Fraction,
    *,
    codec: str,
    pix_fmt: str,
    container_format: str,
    options: dict[str, str] | None = None,
    mux_options: dict[str, str] | None = None,
) -> VideoInfo:
    """Encode ``frames`` (uint8 THWC RGB) with one pts per frame into ``path``, atomically."""
    check_frames(frames)
    rate = as_rate(fps)
    t, h, w, _ = frames.shape
    with (
        atomic_path(path, suffix=path.suffix) as tmp,
        av.open(str(tmp), "w", format=container_format, options=mux_options or {}) as out,
    ):
        stream = cast(av.video.stream.VideoStream, out.add_stream(codec, rate=rate))
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        stream.time_base = 1 / rate
        stream.options = {k: v for k, v in (options or {}).items()}
        ctx = stream.codec_context
        ctx.colorspace = ctx.color_primaries = ctx.color_trc = _BT709
        ctx.color_range = _MPEG_RANGE
        for i in range(t):
            frame = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
            frame = frame.reformat(format=pix_fmt, dst_colorspace="ITU709", dst_color_range="MPEG")
            frame.pts, frame.time_base = i, 1 / rate
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    logger.debug("wrote {}: {} frames {}x{} at {} fps ({})", path.name, t, w, h, rate, codec)
    return VideoInfo(path, w, h, rate, t, float(t / rate), _CODEC_NAMES.get(codec, codec))
