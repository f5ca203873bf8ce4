import itertools

import pytest
import torch

from fploopd.core.assemble import (
    DecodeStep,
    frames_for_latents,
    linear_plan,
    ring_latents,
    ring_plan,
    run_plan,
    soft_append,
)


def fake_decode(latents: torch.Tensor):
    """A causal 'VAE' on a (1, 1, T, 1, 1) latent timeline: frame 0 from latent 0, then 4 per latent.

    Each frame carries its latent's value plus a tag of the decode it came from, so tests can tell
    which decode produced which output frame.
    """
    calls = []

    def decode(start: int, count: int) -> torch.Tensor:
        calls.append((start, count))
        lat = latents[0, 0, start : start + count, 0, 0]
        frames = torch.cat([lat[:1], lat[1:].repeat_interleave(4)])
        tag = torch.full_like(frames, float(len(calls)))
        return torch.stack([frames, tag]).view(1, 2, -1, 1, 1)

    return decode, calls


def test_soft_append_blends_linearly_over_the_overlap():
    a = torch.zeros(1, 1, 5, 1, 1)
    b = torch.ones(1, 1, 4, 1, 1)
    out = soft_append(a, b, 3)
    assert out.shape[2] == 5 + 4 - 3
    assert out[0, 0, :, 0, 0].tolist() == [0, 0, 0, 0.5, 1, 1]


def test_soft_append_without_overlap_concatenates():
    assert soft_append(torch.zeros(1, 2, 1, 1), torch.ones(1, 3, 1, 1), 0).shape == (1, 5, 1, 1)


def test_soft_append_needs_enough_frames():
    with pytest.raises(ValueError, match=">= 4 frames"):
        soft_append(torch.zeros(1, 3, 1, 1), torch.zeros(1, 9, 1, 1), 4)


@pytest.mark.parametrize(("sections", "window"), [(1, 9), (2, 9), (3, 4), (5, 2)])
def test_linear_plan_gives_framepacks_frame_count(sections, window):
    # FramePack: every section adds window latents, the last (earliest in time) also the start latent.
    sizes = [window] * (sections - 1) + [window + 1]
    latents = torch.arange(sum(sizes), dtype=torch.float32).view(1, 1, -1, 1, 1)
    decode, calls = fake_decode(latents)
    video = run_plan(linear_plan(sizes, window), decode)
    assert video.shape[2] == frames_for_latents(sum(sizes))
    # Where decodes do not blend, frame values follow the latent timeline.
    assert video[0, 0, 0, 0, 0] == 0 and video[0, 0, -1, 0, 0] == sum(sizes) - 1
    assert calls[0] == (sum(sizes) - sizes[0], sizes[0])
    if sections > 1:
        assert calls[1] == (sum(sizes) - sizes[0] - sizes[1], sizes[1] + window)


@pytest.mark.parametrize(("main", "conn", "window"), [(1, 1, 9), (2, 1, 3), (3, 2, 2)])
def test_ring_gives_a_seamless_loop_of_the_right_length(main, conn, window):
    sections = main + conn
    m = torch.arange(main * window, dtype=torch.float32).view(1, 1, -1, 1, 1)
    c = 100 + torch.arange(conn * window, dtype=torch.float32).view(1, 1, -1, 1, 1)
    ring = ring_latents(m, c, window)
    assert ring.shape[2] == (sections + 2) * window
    decode, calls = fake_decode(ring)
    clip = run_plan(ring_plan(sections, window), decode)
    assert clip.shape[2] == 4 * window * sections
    # The last frame and the first are consecutive frames of one decode: same tag, and the cut
    # falls between them in that decode's own frame order.
    assert clip[0, 1, 0] == clip[0, 1, -1]
    # Each pair of windows is decoded once; the wrap-around reuses a decode instead of redoing it.
    assert len(calls) == len(set(calls)) == sections + 1


def test_ring_cut_is_continuous_in_the_latent_timeline():
    window = 2
    m = torch.arange(4, dtype=torch.float32).view(1, 1, -1, 1, 1)  # main latents 0..3
    c = torch.arange(4, 6, dtype=torch.float32).view(1, 1, -1, 1, 1)  # connection 4..5, then back to 0
    decode, _ = fake_decode(ring_latents(m, c, window))
    clip = run_plan(ring_plan(3, window), decode)[0, 0, :, 0, 0]
    # Reading the clip as a cycle, consecutive frames never jump backwards except at the 5 -> 0 wrap.
    cyc = torch.cat([clip, clip[:1]])
    jumps = [(a.item(), b.item()) for a, b in itertools.pairwise(cyc) if b < a]
    assert all(a == 5 and b == 0 for a, b in jumps)


def test_ring_needs_two_sections():
    with pytest.raises(ValueError):
        ring_plan(1, 9)


def test_run_plan_reuses_repeated_steps_only():
    plan = linear_plan([2, 2], 2)
    assert plan.steps == (DecodeStep(2, 2), DecodeStep(0, 4))
