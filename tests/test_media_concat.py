"""Remux concatenation: the N-loop file is the 1-loop clip's packets N times, never re-encoded."""

from __future__ import annotations

import itertools
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from fploopd.errors import InputError
from fploopd.media import MediaLimits, concat_files, concat_repeat, probe_video, write_mp4

LIMITS = MediaLimits()


def moving(count: int, seed: int, height: int = 48, width: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    return np.stack([np.roll(base, 2 * i, axis=1) for i in range(count)])


def packets(path: Path) -> list[av.Packet]:
    with av.open(str(path)) as c:
        return [p for p in c.demux(c.streams.video[0]) if p.size]


def decode_all(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("c") / "job_5_1loop.mp4"
    write_mp4(path, moving(20, 0), 30)
    return path


def test_repeat_copies_packets_n_times(tmp_path: Path, clip: Path) -> None:
    out = concat_repeat(clip, tmp_path / "job_5_loop_3.mp4", 3)
    src, dst = packets(clip), packets(out)
    assert [bytes(p) for p in dst] == [bytes(p) for p in src] * 3
    assert [p.is_keyframe for p in dst] == [p.is_keyframe for p in src] * 3
    dts = [p.dts for p in dst]
    assert all(a < b for a, b in itertools.pairwise(dts))
    info = probe_video(out, LIMITS)
    assert (info.frames, info.fps) == (60, Fraction(30))
    assert info.duration == pytest.approx(2.0, abs=1 / 30)
    one, three = decode_all(clip), decode_all(out)
    assert len(three) == 60
    assert all(np.array_equal(a, b) for a, b in zip(one * 3, three, strict=True))  # same bits, same pictures
    data = out.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job_5_loop_3.mp4"]


def test_repeat_once_and_bad_count(tmp_path: Path, clip: Path) -> None:
    out = concat_repeat(clip, tmp_path / "once.mp4", 1)
    assert [bytes(p) for p in packets(out)] == [bytes(p) for p in packets(clip)]
    with pytest.raises(ValueError):
        concat_repeat(clip, tmp_path / "none.mp4", 0)


def test_concat_files_of_matching_clips(tmp_path: Path) -> None:
    a, b = write_mp4(tmp_path / "a.mp4", moving(10, 1), 24).path, write_mp4(tmp_path / "b.mp4", moving(14, 2), 24).path
    out = concat_files([a, b, a], tmp_path / "abc.mp4")
    assert [bytes(p) for p in packets(out)] == [bytes(p) for p in packets(a) + packets(b) + packets(a)]
    frames = decode_all(out)
    assert len(frames) == 34
    assert np.array_equal(frames[10], decode_all(b)[0]) and np.array_equal(frames[24], decode_all(a)[0])
    assert probe_video(out, LIMITS).fps == Fraction(24)


def test_concat_refuses_different_streams(tmp_path: Path) -> None:
    a = write_mp4(tmp_path / "a.mp4", moving(4, 1), 24).path
    c = write_mp4(tmp_path / "c.mp4", moving(4, 1, 64, 64), 24).path
    with pytest.raises(InputError, match=r"^c\.mp4 cannot be joined to a\.mp4 without re-encoding"):
        concat_files([a, c], tmp_path / "ac.mp4")
    assert not (tmp_path / "ac.mp4").exists()
