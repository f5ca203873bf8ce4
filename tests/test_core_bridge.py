"""bridge_plan: FramePackConnect's decode of [head | generated | tail], checked with a causal fake VAE."""

import pytest
import torch

from fploopd.core.assemble import DecodeStep, bridge_plan, frames_for_latents, linear_plan, run_plan


def fake_decode(latents: torch.Tensor):
    """A causal 'VAE' on a (1, 1, T, 1, 1) timeline: frame 0 from latent ``start``, then 4 per latent."""
    calls = []

    def decode(start: int, count: int) -> torch.Tensor:
        calls.append((start, count))
        lat = latents[0, 0, start : start + count, 0, 0]
        return torch.cat([lat[:1], lat[1:].repeat_interleave(4)]).view(1, 1, -1, 1, 1)

    return decode, calls


def continuous(latents: torch.Tensor) -> torch.Tensor:
    """What one decode of the whole timeline gives."""
    lat = latents[0, 0, :, 0, 0]
    return torch.cat([lat[:1], lat[1:].repeat_interleave(4)])


CASES = [  # head, sections, window, tail: tails shorter, equal and longer than a window
    (3, 1, 9, 3),
    (19, 1, 9, 18),
    (4, 2, 3, 3),
    (5, 3, 2, 2),
    (3, 2, 2, 1),
    (6, 1, 4, 4),
]


@pytest.mark.parametrize(("head", "sections", "window", "tail"), CASES)
def test_bridge_decode_is_one_aligned_causal_decode(head, sections, window, tail):
    total = head + sections * window + tail
    # Distinct values per latent, so a shifted blend would show.
    latents = (torch.arange(total, dtype=torch.float32) ** 1.5).view(1, 1, -1, 1, 1)
    decode, _calls = fake_decode(latents)
    video = run_plan(bridge_plan(head, sections, window, tail), decode)
    assert video.shape[2] == frames_for_latents(total)
    # Blending two decodes of the same moments changes nothing only if they are aligned.
    assert torch.allclose(video[0, 0, :, 0, 0], continuous(latents))
    # The bridge frames (what video2loop keeps) sit at 4*head - 3, 4 per generated latent.
    first = frames_for_latents(head)
    bridge = video[0, 0, first : first + 4 * sections * window, 0, 0]
    assert torch.allclose(bridge, latents[0, 0, head : head + sections * window, 0, 0].repeat_interleave(4))


@pytest.mark.parametrize(("head", "sections", "window", "tail"), CASES)
def test_bridge_plan_walks_backwards_decoding_each_window_once(head, sections, window, tail):
    total = head + sections * window + tail
    plan = bridge_plan(head, sections, window, tail)
    assert plan.steps[0] == DecodeStep(head + sections * window, tail)  # the tail alone first
    assert plan.steps[-1] == DecodeStep(0, head + window)  # the head with the first generated window
    generated = plan.steps[1:-1]
    assert [s.start for s in generated] == [head + k * window for k in reversed(range(sections))]
    assert all(s.count == min(2 * window, total - s.start) for s in generated)
    assert plan.overlap == 4 * window - 3
    decode, calls = fake_decode(torch.zeros(1, 1, total, 1, 1))
    run_plan(plan, decode)
    assert len(calls) == len(set(calls)) == sections + 2


def test_bridge_blends_each_seam_over_the_overlap():
    # Tag every decode with its own constant: seams must fade over 4w-3 frames (or the short tail).
    head, sections, window, tail = 3, 2, 3, 2
    plan = bridge_plan(head, sections, window, tail)
    values = iter([10.0, 20.0, 30.0, 40.0])

    def decode(start: int, count: int) -> torch.Tensor:
        return torch.full((1, 1, frames_for_latents(count), 1, 1), next(values))

    video = run_plan(plan, decode)[0, 0, :, 0, 0]
    assert video.shape[0] == frames_for_latents(head + sections * window + tail)
    # The tail decode (10) is blended into entirely: it has 4*2-3 = 5 frames, fewer than 4*3-3 = 9.
    assert video[-1] == 10.0 and video[-5] == 20.0 and 10.0 < video[-3] < 20.0
    # The head's own frames (40) stay pure up to where the first generated window begins.
    assert torch.all(video[: frames_for_latents(head)] == 40.0)


def test_bridge_plan_refuses_empty_parts():
    with pytest.raises(ValueError, match="bridge needs"):
        bridge_plan(3, 1, 9, 0)


def test_existing_plans_are_unchanged_by_the_overlap_clamp():
    # linear plans start with a whole window, so the clamp never applies to them.
    latents = torch.arange(19, dtype=torch.float32).view(1, 1, -1, 1, 1)
    decode, _ = fake_decode(latents)
    video = run_plan(linear_plan([9, 10], 9), decode)
    assert torch.allclose(video[0, 0, :, 0, 0], continuous(latents))
