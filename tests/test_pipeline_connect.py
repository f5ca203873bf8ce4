"""The connect pipeline: FramePackConnect's contexts, resume, frame counts, kept frames, short inputs."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fploopd.core.plan import bridge_section, original_paddings
from fploopd.engine.sections import Checkpoint, Conditioning
from fploopd.errors import Cancelled, InputError
from fploopd.media import probe_video, read_video, write_mp4
from fploopd.media.limits import MediaLimits
from fploopd.pipelines import run_job
from fploopd.pipelines.connect import (
    ConnectInputs,
    Sides,
    connect_pixels,
    decode_bridge,
    encode_sides,
    generate_bridge,
    load_inputs,
)
from fploopd.pipelines.progress import Reporter
from fploopd.spec import JobSpec

SPEC = JobSpec(prompt="bridge", pipeline="connect", resolution=64, window=2, connection_sections=2, steps=2)


def clip(frames: int, height: int, width: int, hue: int) -> np.ndarray:
    """A smooth moving pattern (survives H.264), different per ``hue`` so head and tail differ."""
    y, x = np.mgrid[0:height, 0:width]
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        out[t, ..., 0] = (x * 2 + t * 5 + hue) % 256
        out[t, ..., 1] = (y * 2 + hue) % 256
        out[t, ..., 2] = (hue + t * 3) % 256
    return out


def video(path, frames, fps=30, size=(64, 64), hue=0):
    write_mp4(path, clip(frames, *size, hue), fps, crf=10)
    return path


class RecordingModel:
    """A stand-in transformer: predicts zero velocity and records each section's context."""

    def __init__(self) -> None:
        self.calls: list[dict[str, torch.Tensor]] = []

    def reset(self, num_steps: int) -> None:
        self.calls.append({})

    def __call__(self, *, branch: str = "pos", **kw: torch.Tensor) -> torch.Tensor:
        if not self.calls[-1]:
            self.calls[-1].update({k: v.clone() for k, v in kw.items() if "latents" in k and k != "hidden_states"})
        return torch.zeros_like(kw["hidden_states"])


FAKE = SimpleNamespace(device=torch.device("cpu"))
COND = Conditioning(positive={}, negative=None, image_embeds=torch.zeros(1, 1, 1))


def coded(start: float, n: int) -> torch.Tensor:
    """Latents whose every value is their own index (exact in bfloat16)."""
    return (start + torch.arange(n, dtype=torch.float32)).view(1, 1, n, 1, 1).expand(1, 16, n, 2, 2).clone()


def test_sections_take_framepackconnects_contexts():
    sides = Sides(head=coded(0, 6), tail=coded(100, 5), head_4x=3, tail_4x=2)
    model = RecordingModel()
    bridge = generate_bridge(FAKE, model, COND, sides, SPEC, seed=3)
    assert bridge.shape[2] == SPEC.connection_sections * SPEC.window
    head, tail = sides.head.bfloat16(), sides.tail.bfloat16()
    first, second = model.calls
    pads = original_paddings(2)
    for call, pad in zip((first, second), pads):
        want = bridge_section(3, pad * SPEC.window, SPEC.window, 2).tensors()
        assert all(torch.equal(call[k], v) for k, v in want.items())
    # First section: the head's last latents on one side, the tail's first on the other.
    assert torch.equal(first["latents_clean"], torch.cat([head[:, :, 5:6], tail[:, :, :1]], dim=2))
    assert torch.equal(first["latents_history_2x"], torch.cat([head[:, :, 3:5], tail[:, :, 1:3]], dim=2))
    assert torch.equal(first["latents_history_4x"], torch.cat([head[:, :, :3], tail[:, :, 3:5]], dim=2))
    # Second section: the first one's latents were prepended to the tail side's history.
    later = torch.cat([bridge[:, :, 2:], sides.tail], dim=2).bfloat16()
    assert torch.equal(second["latents_clean"], torch.cat([head[:, :, 5:6], later[:, :, :1]], dim=2))
    assert torch.equal(second["latents_history_2x"], torch.cat([head[:, :, 3:5], later[:, :, 1:3]], dim=2))
    assert torch.equal(second["latents_history_4x"], torch.cat([head[:, :, :3], later[:, :, 3:5]], dim=2))


def test_resume_after_a_stop_equals_an_uninterrupted_run(tmp_path):
    sides = Sides(head=coded(0, 6), tail=coded(100, 5), head_4x=3, tail_4x=2)
    spec = SPEC.model_copy(update={"connection_sections": 3})
    whole = generate_bridge(FAKE, RecordingModel(), COND, sides, spec, seed=9)
    ckpt = Checkpoint(tmp_path / "ckpt.safetensors", key="k")
    seen = []
    reporter = Reporter(lambda p: seen.append((p.section, p.step)), should_stop=lambda: seen and seen[-1] == (2, 1))
    with pytest.raises(Cancelled):
        generate_bridge(FAKE, RecordingModel(), COND, sides, spec, seed=9, checkpoint=ckpt, reporter=reporter)
    assert ckpt.load().done == 1
    model = RecordingModel()
    resumed = generate_bridge(FAKE, model, COND, sides, spec, seed=9, checkpoint=ckpt)
    assert len(model.calls) == 2 and torch.equal(resumed, whole)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pair")
    # The tail has another rate and size: it is resampled to 30 fps and fitted to the head's bucket.
    return video(folder / "head.mp4", 26, hue=0), video(folder / "tail.mp4", 20, fps=24, size=(100, 90), hue=120)


def test_connect_keeps_the_untouched_frames_exactly(tiny_components, pair):
    inputs = load_inputs(*pair, SPEC, MediaLimits())
    assert (len(inputs.head), len(inputs.tail)) == (26, 25)  # 20 frames at 24 fps = 25 at 30 fps
    assert inputs.tail.shape[1:] == inputs.head.shape[1:] == (64, 64, 3)
    assert (inputs.head_4x, inputs.tail_4x) == (3, 3)
    sides = encode_sides(tiny_components, inputs.head_encoded, inputs.tail_encoded)
    assert (sides.head.shape[2], sides.tail.shape[2]) == (6, 5)  # the first tail latent is dropped
    bridge = torch.zeros(1, 16, 4, 8, 8)  # any latents: this checks the assembly, not the model
    pixels = connect_pixels(inputs, decode_bridge(tiny_components, sides, bridge, SPEC.window))
    assert len(pixels) == inputs.output_frames(2, 2) == 26 + 16 + 25 - 1
    kept_head, kept_tail = len(inputs.head_kept), len(inputs.tail_kept)
    assert (kept_head, kept_tail) == (26 - 21, 25 - 21)
    assert np.array_equal(pixels[:kept_head], inputs.head[:kept_head])
    assert np.array_equal(pixels[-kept_tail:], inputs.tail[-kept_tail:])
    assert not np.array_equal(pixels[kept_head], inputs.head[kept_head])  # decoded from here on


def test_connect_job_writes_head_bridge_tail(tiny_components, pair, tmp_path):
    head, tail = pair
    result = run_job(SPEC, {"head": head, "tail": tail}, tmp_path / "out", name="join", seeds=[4],
                     components=tiny_components, work_dir=tmp_path / "work")  # fmt: skip
    (out,) = result.outputs
    assert out.path.name == "join_4_connect.mp4" and out.kind == "connect"
    info = probe_video(out.path, MediaLimits())
    expected = 26 + 4 * SPEC.connection_sections * SPEC.window + 25 - 1
    assert (info.frames, info.fps, info.codec, info.width, info.height) == (expected, 30, "h264", 64, 64)
    assert out.frames == expected
    got, _ = read_video(out.path, MediaLimits())
    want_head, _ = read_video(head, MediaLimits(), fps=30, size=(64, 64))
    want_tail, _ = read_video(tail, MediaLimits(), fps=30, size=(64, 64))

    def diff(a, b):
        return np.abs(a.astype(int) - b.astype(int)).mean()

    assert diff(got[:5], want_head[:5]) < 6  # an H.264 round trip at 64x64 only
    assert diff(got[-4:], want_tail[-4:]) < 6
    assert diff(got[:5], want_tail[:5]) > 20  # the check can tell head from tail


@pytest.mark.parametrize(
    ("head_frames", "tail_frames", "tail_fps", "bad", "count"),
    [(15, 30, 30, "head.mp4", 15), (30, 12, 24, "tail.mp4", 15)],  # 12 frames at 24 fps = 15 at 30
)
def test_too_short_inputs_name_the_file_and_the_minimum(
    tiny_components, tmp_path, head_frames, tail_frames, tail_fps, bad, count
):
    head = video(tmp_path / "head.mp4", head_frames)
    tail = video(tmp_path / "tail.mp4", tail_frames, fps=tail_fps)
    with pytest.raises(InputError) as err:
        run_job(SPEC, {"head": head, "tail": tail}, tmp_path / "o", name="x", seeds=[1],
                components=tiny_components, work_dir=tmp_path / "w")  # fmt: skip
    assert err.value.file == bad
    assert f"{bad} has {count} frames at 30 fps" in err.value.message
    assert "at least 16 frames" in err.value.message
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_latent_only_mode_is_refused():
    # Refused by the spec itself, so a sidecar fails at intake, before any model loads.
    from pydantic import ValidationError

    from fploopd.daemon.validation import translate
    from fploopd.spec import JobSpec

    with pytest.raises(ValidationError, match="decode: false") as exc:
        JobSpec.model_validate({**SPEC.model_dump(), "decode": False})
    err = translate(exc.value, "x.json")
    assert isinstance(err, InputError) and err.field == "decode" and "decode: false" in err.message


def test_connect_inputs_split_into_kept_and_encoded():
    frames = np.zeros((40, 8, 8, 3), np.uint8)
    inputs = ConnectInputs(frames, frames[:30], head_4x=3, tail_4x=2)
    assert len(inputs.head_kept) + len(inputs.head_encoded) == 40 and len(inputs.head_encoded) == 21
    assert len(inputs.tail_encoded) + len(inputs.tail_kept) == 30 and len(inputs.tail_encoded) == 17
