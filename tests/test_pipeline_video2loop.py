"""video2loop: the video's end bridged back to its start; 1-loop = the video + the bridge frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fploopd.core.assemble import bridge_plan, run_plan
from fploopd.errors import InputError
from fploopd.media import probe_video, read_video, write_mp4
from fploopd.media.limits import MediaLimits
from fploopd.pipelines import run_job
from fploopd.pipelines.connect import bridge_frames
from fploopd.pipelines.video2loop import LoopVideo, load_video, loop_pixels
from fploopd.spec import JobSpec

SPEC = JobSpec(prompt="loop it", pipeline="video2loop", resolution=64, window=2, connection_sections=2, steps=2,
               loop_count=3)  # fmt: skip


def clip(frames: int) -> np.ndarray:
    y, x = np.mgrid[0:64, 0:64]
    out = np.empty((frames, 64, 64, 3), np.uint8)
    for t in range(frames):
        out[t, ..., 0] = (x * 2 + t * 5) % 256
        out[t, ..., 1] = (y * 2) % 256
        out[t, ..., 2] = (t * 7) % 256
    return out


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("v2l") / "waves.mp4"
    write_mp4(path, clip(26), 30, crf=10)
    return path


def test_bridge_frames_are_the_generated_latents_aligned():
    # A causal fake VAE: frame values are their latent's value, so alignment is checkable exactly.
    head, sections, window, tail = 6, 2, 2, 5
    latents = (torch.arange(head + sections * window + tail, dtype=torch.float32) ** 1.3).view(1, 1, -1, 1, 1)

    def decode(start: int, count: int) -> torch.Tensor:
        lat = latents[0, 0, start : start + count, 0, 0]
        return torch.cat([lat[:1], lat[1:].repeat_interleave(4)]).view(1, 1, -1, 1, 1)

    decoded = run_plan(bridge_plan(head, sections, window, tail), decode)
    frames = bridge_frames(decoded, head, sections * window)
    assert frames.shape[2] == 4 * sections * window
    generated = latents[0, 0, head : head + sections * window, 0, 0]
    assert torch.allclose(frames[0, 0, :, 0, 0], generated.repeat_interleave(4))


def test_loop_pixels_put_the_whole_video_first():
    video = LoopVideo(clip(26), n4x=3)
    bridge = torch.zeros(1, 3, 16, 64, 64)
    pixels = loop_pixels(video, bridge)
    assert len(pixels) == video.loop_frames(2, 2) == 26 + 16
    assert np.array_equal(pixels[:26], video.frames) and np.all(pixels[26:] == 128)
    # The end of the video is the head side, its start the tail side.
    assert np.array_equal(video.head_encoded, video.frames[-21:]) and np.array_equal(video.tail_encoded, video.frames[:21])


def test_video2loop_job_writes_a_1loop_and_an_n_loop(tiny_components, source, tmp_path):
    result = run_job(SPEC, {"video": source}, tmp_path / "out", name="waves", seeds=[6], components=tiny_components,
                     work_dir=tmp_path / "work")  # fmt: skip
    by_kind = {o.kind: o for o in result.outputs}
    one, many = by_kind["1loop"], by_kind["loop"]
    assert one.path.name == "waves_6_1loop.mp4" and many.path.name == "waves_6_loop_3.mp4"
    frames = 26 + 4 * SPEC.connection_sections * SPEC.window
    info = probe_video(one.path, MediaLimits())
    assert (info.frames, info.fps, info.codec) == (frames, 30, "h264") and one.frames == frames
    assert probe_video(many.path, MediaLimits()).frames == 3 * frames == many.frames
    got, _ = read_video(one.path, MediaLimits())
    want = load_video(source, SPEC, MediaLimits()).frames
    diff = np.abs(got[:26].astype(int) - want.astype(int)).mean(axis=(1, 2, 3))
    assert diff.max() < 6  # the video's own frames, through one more H.264 round trip
    assert np.abs(got[:26].astype(int) - np.roll(want, 5, axis=0).astype(int)).mean() > 10  # and in order


def test_too_short_video_names_the_file_and_the_minimum(tiny_components, tmp_path):
    path = tmp_path / "short.mp4"
    write_mp4(path, clip(14), 30)
    with pytest.raises(InputError) as err:
        run_job(SPEC, {"video": path}, tmp_path / "o", name="x", seeds=[1], components=tiny_components,
                work_dir=tmp_path / "w")  # fmt: skip
    assert err.value.file == "short.mp4" and err.value.field == "video"
    assert "short.mp4 has 14 frames at 30 fps" in err.value.message and "at least 16 frames" in err.value.message
