"""write_mp4: exact frame count and rate, H.264 yuv420p, faststart, crf, even sizes, atomic."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from fploopd.media import MediaLimits, probe_video, read_video, write_mp4

LIMITS = MediaLimits()


def pattern(count: int, height: int = 48, width: int = 64) -> np.ndarray:
    """Smooth moving colour gradients: compressible, and every frame different."""
    y, x = np.mgrid[0:height, 0:width]
    frames = [
        np.stack([(x * 3 + 7 * i) % 256, (y * 4 + 3 * i) % 256, np.full_like(x, 40 + 5 * i)], -1) for i in range(count)
    ]
    return np.asarray(frames, dtype=np.uint8)


def test_round_trip_keeps_frames_rate_and_colours(tmp_path: Path) -> None:
    frames = pattern(30)
    info = write_mp4(tmp_path / "out.mp4", frames, 30, crf=10)
    assert (info.frames, info.fps, info.width, info.height, info.codec) == (30, Fraction(30), 64, 48, "h264")
    back, fps = read_video(tmp_path / "out.mp4", LIMITS)
    assert fps == 30.0 and back.shape == frames.shape
    # BT.709 both ways: a matrix or range mismatch would shift colours by far more than this.
    assert np.abs(back.astype(int) - frames).mean() < 3
    flat = np.full((2, 16, 16, 3), (200, 50, 100), np.uint8)
    write_mp4(tmp_path / "flat.mp4", flat, 30)
    assert np.abs(read_video(tmp_path / "flat.mp4", LIMITS)[0].astype(int) - flat).max() <= 3


def test_stream_parameters(tmp_path: Path) -> None:
    write_mp4(tmp_path / "out.mp4", pattern(10), Fraction(30000, 1001))
    with av.open(str(tmp_path / "out.mp4")) as c:
        s = c.streams.video[0]
        assert (s.codec_context.name, s.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert s.average_rate == Fraction(30000, 1001) and s.frames == 10
        frame = next(c.decode(s))
        assert frame.colorspace == 1 and frame.color_range == 1  # BT.709, limited range
    data = (tmp_path / "out.mp4").read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # faststart: playable while downloading
    info = probe_video(tmp_path / "out.mp4", LIMITS)
    assert info.frames == 10 and info.fps == Fraction(30000, 1001)


def test_crf_is_applied(tmp_path: Path) -> None:
    frames = pattern(8)
    write_mp4(tmp_path / "fine.mp4", frames, 30, crf=0)
    write_mp4(tmp_path / "coarse.mp4", frames, 30, crf=45)
    assert (tmp_path / "fine.mp4").stat().st_size > 3 * (tmp_path / "coarse.mp4").stat().st_size


def test_odd_size_and_bad_input_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even dimensions, got 63x48"):
        write_mp4(tmp_path / "odd.mp4", pattern(2, 48, 63), 30)
    with pytest.raises(ValueError, match="uint8"):
        write_mp4(tmp_path / "f.mp4", pattern(2).astype(np.float32), 30)
    assert list(tmp_path.iterdir()) == []


def test_output_appears_atomically(tmp_path: Path) -> None:
    target = tmp_path / "job_1_1loop.mp4"
    write_mp4(target, pattern(4), 24)
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temporary left behind
    write_mp4(target, pattern(6), 24)  # replacing an existing file is atomic too
    assert probe_video(target, LIMITS).frames == 6
