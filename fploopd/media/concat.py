"""Join encoded clips without re-encoding: packets are copied, only their timestamps move.

This is how the N-loop file is made from the 1-loop clip: it is bit-for-bit the same pictures,
made in milliseconds, with no second generation of compression loss (FramePackLoop re-encodes).
Only the first video stream is copied; fploopd's clips have no audio.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import av.container
import av.video.stream

from fploopd.errors import InputError
from fploopd.fsutil import atomic_path
from fploopd.media.probe import open_video, stream_rate, video_stream


def concat_repeat(src: Path, dst: Path, n: int) -> Path:
    """Write ``src``'s video stream ``n`` times in a row into the MP4 ``dst`` (faststart, atomic)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return concat_files([Path(src)] * n, dst)


def concat_files(sources: Sequence[Path], dst: Path) -> Path:
    """Concatenate clips whose video streams share codec, size, pixel format and codec headers.

    Each clip is shifted so that it starts where the previous one's last picture ends; the first
    keeps its own timestamps (and with them the encoder's B-frame delay).
    """
    sources = [Path(s) for s in sources]
    if not sources:
        raise ValueError("concat_files needs at least one source")
    dst = Path(dst)
    _check_compatible(sources)
    with (
        atomic_path(dst, suffix=".mp4") as tmp,
        av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as out,
    ):
        out_stream: av.video.stream.VideoStream | None = None
        time_base = Fraction(1)  # the first clip's, once it is open
        cursor: int | None = None  # where the next clip starts, in the first clip's time base
        for src in sources:
            with open_video(src) as container:
                stream = video_stream(container, src.name)
                if out_stream is None:
                    out_stream = out.add_stream_from_template(stream)
                    out_stream.time_base = time_base = _time_base(stream, src.name)
                packets = [p for p in container.demux(stream) if p.dts is not None and p.size]
                if not packets:
                    raise InputError(f"{src.name} has no video packets", file=src.name)
                rows, start, span = _timeline(packets, stream, time_base, src.name)
                shift = 0 if cursor is None else cursor - start
                for p, (pts, dts, duration) in zip(packets, rows, strict=True):
                    p.pts, p.dts, p.duration, p.time_base = pts + shift, dts + shift, duration, time_base
                    p.stream = out_stream
                    out.mux(p)
                cursor = start + shift + span
    return dst


def _timeline(
    packets: list[av.Packet], stream: av.video.stream.VideoStream, time_base: Fraction, name: str
) -> tuple[list[tuple[int, int, int]], int, int]:
    """Each packet's (pts, dts, duration) in ``time_base``, the clip's first presentation time and its length.

    The length runs to the end of the last picture, so the next clip starts one frame later.
    """
    scale = _time_base(stream, name) / time_base
    one_frame = max(1, round(1 / (stream_rate(stream, name) * time_base)))  # for packets without a duration
    rows = []
    for p in packets:
        dts = p.dts or 0  # packets without a dts were left out
        pts = p.pts if p.pts is not None else dts
        rows.append((round(pts * scale), round(dts * scale), round(p.duration * scale) if p.duration else one_frame))
    start = min(pts for pts, _, _ in rows)
    return rows, start, max(pts + duration for pts, _, duration in rows) - start


def _time_base(stream: av.video.stream.VideoStream, name: str) -> Fraction:
    if not stream.time_base:
        raise InputError(f"{name} declares no time base", file=name)
    return stream.time_base


def _check_compatible(sources: list[Path]) -> None:
    ref = None
    for src in dict.fromkeys(sources):
        with open_video(src) as container:
            s = video_stream(container, src.name)
            ctx = s.codec_context
            key = (ctx.name, ctx.width, ctx.height, ctx.pix_fmt, bytes(ctx.extradata or b""))
        if ref is None:
            ref = (src, key)
        elif key != ref[1]:
            raise InputError(
                f"{src.name} cannot be joined to {ref[0].name} without re-encoding: codec, size, pixel format "
                f"or codec headers differ ({key[:4]} vs {ref[1][:4]})",
                file=src.name,
            )
