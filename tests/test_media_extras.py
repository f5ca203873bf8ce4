"""write_outputs: every kind under the project's names; WebP/GIF loop forever with exact timing."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from fploopd.media import MediaLimits, gif_rate, output_path, probe_video, write_gif, write_outputs, write_webp

LIMITS = MediaLimits()


def distinct(count: int, height: int = 48, width: int = 64) -> np.ndarray:
    """Frames that all differ (GIF and WebP encoders merge identical neighbours)."""
    y, x = np.mgrid[0:height, 0:width]
    return np.asarray(
        [np.stack([(x * 4 + 9 * i) % 256, y * 5, np.full_like(x, 10 * i)], -1) for i in range(count)], np.uint8
    )


def durations(path: Path) -> tuple[int, int, list[int]]:
    """(frame count, loop flag, per-frame durations in ms) as Pillow reads them back."""
    with Image.open(path) as im:
        found = []
        for i in range(im.n_frames):
            im.seek(i)
            im.load()  # WebP fills in the duration when a frame is loaded
            found.append(int(im.info["duration"]))
        return im.n_frames, im.info["loop"], found


def test_write_outputs_writes_every_kind(tmp_path: Path) -> None:
    frames = distinct(12)
    base = tmp_path / "my.job_42_1loop"  # a dot in the job name must survive
    paths = write_outputs(frames, 30, base, ["mp4", "webp", "gif", "prores", "png"], crf=18)
    names = [p.name for p in paths]
    assert names == [
        "my.job_42_1loop.mp4",
        "my.job_42_1loop.webp",
        "my.job_42_1loop.gif",
        "my.job_42_1loop.mov",
        "my.job_42_1loop_png",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)  # no temporaries left

    mp4 = probe_video(paths[0], LIMITS)
    assert (mp4.frames, mp4.fps, mp4.codec) == (12, Fraction(30), "h264")

    with av.open(str(paths[3])) as c:
        s = c.streams.video[0]
        assert (s.codec_context.name, s.codec_context.pix_fmt, s.average_rate) == ("prores", "yuv422p10le", 30)
        assert len(list(c.decode(s))) == 12

    pngs = sorted(paths[4].iterdir())
    assert [p.name for p in pngs][:2] == ["my.job_42_1loop_00000.png", "my.job_42_1loop_00001.png"]
    assert len(pngs) == 12
    with Image.open(pngs[5]) as im:
        assert np.array_equal(np.asarray(im), frames[5])


def test_webp_loops_forever_with_millisecond_timing(tmp_path: Path) -> None:
    path = write_webp(tmp_path / "a.webp", distinct(12), 30)
    count, loop, ms = durations(path)
    assert (count, loop) == (12, 0)
    assert ms[:3] == [33, 34, 33] and sum(ms) == 400


def test_gif_loops_forever_with_centisecond_timing(tmp_path: Path) -> None:
    path = write_gif(tmp_path / "a.gif", distinct(12), 30)
    count, loop, ms = durations(path)
    assert (count, loop) == (12, 0)
    assert ms[:3] == [30, 40, 30] and sum(ms) == 400  # 3.33 cs per frame, rounded cumulatively
    frames = distinct(12)
    with Image.open(path) as im:
        im.seek(7)
        assert (
            np.abs(np.asarray(im.convert("RGB")).astype(int) - frames[7]).mean() < 12
        )  # one shared palette is close enough


def test_fast_gif_drops_frames_instead_of_using_short_delays(tmp_path: Path) -> None:
    assert gif_rate(60) == (2, Fraction(30)) and gif_rate(50) == (1, Fraction(50))
    path = write_gif(tmp_path / "fast.gif", distinct(12), 60)
    count, _, ms = durations(path)
    assert count == 6 and sum(ms) == 200 and min(ms) >= 20


def test_unknown_kind_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown output kind 'avi'"):
        write_outputs(distinct(2), 30, tmp_path / "x_1_1loop", ["mp4", "avi"])
    assert list(tmp_path.iterdir()) == []
    assert output_path(tmp_path / "x_1_1loop", "prores").name == "x_1_1loop.mov"


def test_png_folder_is_never_merged_into_an_existing_one(tmp_path: Path) -> None:
    (tmp_path / "x_1_1loop_png").mkdir()
    with pytest.raises(FileExistsError):
        write_outputs(distinct(2), 30, tmp_path / "x_1_1loop", ["png"])
