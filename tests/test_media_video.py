"""probe_video / read_video: counts, rates, nearest-timestamp resampling, first/last, limits, errors."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from fploopd.errors import InputError
from fploopd.media import MediaLimits, probe_video, read_video, write_mp4

LIMITS = MediaLimits()


def indexed_frames(count: int, height: int = 64, width: int = 64) -> np.ndarray:
    """Flat grey frames whose level tells their index (20 + 4 i), so decoded frames can be identified."""
    levels = 20 + 4 * np.arange(count, dtype=np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (count, height, width, 3)).copy()


def indices(frames: np.ndarray) -> list[int]:
    return [round((float(f.mean()) - 20) / 4) for f in frames]


def write_raw(path: Path, frames: np.ndarray, pts_ms: list[int], *, rotation: float | None = None) -> Path:
    """H.264 MP4 with the given presentation times in milliseconds (variable frame rate allowed)."""
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.time_base = Fraction(1, 1000)
        stream.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for frame_rgb, pts in zip(frames, pts_ms, strict=True):
            frame = av.VideoFrame.from_ndarray(frame_rgb, format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def clip24(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("v") / "clip24.mp4"
    write_mp4(path, indexed_frames(48), 24)
    return path


def test_probe(clip24: Path) -> None:
    info = probe_video(clip24, LIMITS)
    assert (info.width, info.height, info.fps, info.frames, info.codec) == (64, 64, Fraction(24), 48, "h264")
    assert info.duration == pytest.approx(2.0, abs=1 / 24)
    assert info.frames_exact and info.rotation == 0


def test_read_native(clip24: Path) -> None:
    frames, fps = read_video(clip24, LIMITS)
    assert frames.shape == (48, 64, 64, 3) and frames.dtype == np.uint8
    assert fps == 24.0
    assert indices(frames) == list(range(48))


def test_24_fps_resampled_to_30_by_nearest_timestamp(clip24: Path) -> None:
    frames, fps = read_video(clip24, LIMITS, fps=30)
    assert fps == 30.0 and len(frames) == 60
    # Output k at k/30 s takes source round(k * 24 / 30), the earlier one on a tie.
    expected = [int(np.floor(k * 24 / 30 + 0.5 - 1e-9)) for k in range(60)]
    assert indices(frames) == expected


def test_variable_frame_rate_resampled(tmp_path: Path) -> None:
    pts = [0, 40, 50, 200, 210, 500]  # ms; the last frame lasts about as long as the one before
    path = write_raw(tmp_path / "vfr.mp4", indexed_frames(6), pts)
    frames, fps = read_video(path, LIMITS, fps=20)  # output times 0, 50, 100, ... ms
    times = [k * 50 for k in range(len(frames))]
    expected = [min(range(6), key=lambda i: (abs(pts[i] - t), i)) for t in times]
    assert fps == 20.0
    assert 10 <= len(frames) <= 12  # 500 ms plus the last frame's own length
    assert indices(frames) == expected


def test_first_and_last(clip24: Path) -> None:
    head, _ = read_video(clip24, LIMITS, first=5)
    tail, _ = read_video(clip24, LIMITS, last=7)
    assert indices(head) == [0, 1, 2, 3, 4]
    assert indices(tail) == list(range(41, 48))
    tail30, _ = read_video(clip24, LIMITS, fps=30, last=3)
    assert indices(tail30) == [46, 46, 47]  # k = 57, 58, 59 -> 45.6, 46.4, 47.2 source frames
    with pytest.raises(ValueError):
        read_video(clip24, LIMITS, first=2, last=2)


def test_size_resizes_and_crops(clip24: Path) -> None:
    frames, _ = read_video(clip24, LIMITS, first=2, size=(32, 48))
    assert frames.shape == (2, 32, 48, 3)


def test_display_rotation_is_applied(tmp_path: Path) -> None:
    stored = np.zeros((1, 32, 64, 3), np.uint8)
    stored[0, :8, :8] = 255  # white marker at the stored top-left
    path = write_raw(tmp_path / "phone.mp4", stored, [0], rotation=-90)  # display 90 degrees clockwise
    assert (probe_video(path, LIMITS).width, probe_video(path, LIMITS).height) == (32, 64)
    frames, _ = read_video(path, LIMITS)
    assert frames.shape == (1, 64, 32, 3)
    assert frames[0, :6, -6:].mean() > 200 and frames[0, :6, :6].mean() < 50


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (MediaLimits(max_video_frames=10), r"^clip24\.mp4 has 48 frames; the limit is 10$"),
        (MediaLimits(max_video_seconds=1.5), r"^clip24\.mp4 lasts 2\.0 s; the limit is 1\.5 s$"),
        (MediaLimits(max_video_pixels=1000), r"^clip24\.mp4 is 64x64 = 4096 px per frame; the limit is 1000 px$"),
        (MediaLimits(max_video_bytes=100), r"^clip24\.mp4 is [\d.]+ KiB; the limit is 100 bytes$"),
        (
            MediaLimits(max_decoded_bytes=100_000),
            r"^clip24\.mp4: 48 frames of 64x64 need 576 KiB decoded; the limit is 97\.7 KiB",
        ),
    ],
)
def test_limits_name_the_file_and_the_limit(clip24: Path, limits: MediaLimits, message: str) -> None:
    with pytest.raises(InputError, match=message) as e:
        read_video(clip24, limits)
    assert e.value.file == "clip24.mp4"


def test_max_frames_counts_output_frames(clip24: Path) -> None:
    assert len(read_video(clip24, LIMITS, max_frames=48)[0]) == 48
    with pytest.raises(InputError, match=r"^clip24\.mp4 has 60 frames at 30 fps; the limit is 50$"):
        read_video(clip24, LIMITS, fps=30, max_frames=50)


def test_corrupt_and_foreign_files(tmp_path: Path, clip24: Path) -> None:
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(5).bytes(4000))
    (tmp_path / "cut.mp4").write_bytes(clip24.read_bytes()[:300])
    (tmp_path / "list.m3u8").write_text(f"#EXTM3U\n#EXTINF:2,\n{clip24}\n#EXT-X-ENDLIST\n")
    for name in ("noise.mp4", "cut.mp4", "list.m3u8"):
        with pytest.raises(
            InputError, match=rf"^{name.replace('.', '[.]')} (is not a readable video|is corrupt|has no video stream)"
        ) as e:
            read_video(tmp_path / name, LIMITS)
        assert e.value.file == name
    with pytest.raises(InputError, match=r"^gone\.mp4 does not exist$"):
        probe_video(tmp_path / "gone.mp4", LIMITS)
