"""From latents to frames: decode plans, soft append and the loop ring.

The causal VAE turns ``n`` latents into ``4n - 3`` frames. FramePack decodes each section together
with its neighbour and blends consecutive decodes over ``4*window - 3`` frames with linear weights
(soft append), so section seams do not show. A loop decodes a ring of sections the same way, so
that the frames on both sides of the loop cut come from one decode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

TIME_DIM = -3  # (..., T, H, W)


def frames_for_latents(latents: int) -> int:
    return 4 * latents - 3


def soft_append(earlier: torch.Tensor, later: torch.Tensor, overlap: int) -> torch.Tensor:
    """Join two clips whose last/first ``overlap`` frames show the same moment, fading linearly."""
    if overlap <= 0:
        return torch.cat([earlier, later], dim=TIME_DIM)
    if earlier.shape[TIME_DIM] < overlap or later.shape[TIME_DIM] < overlap:
        raise ValueError(
            f"both clips need >= {overlap} frames, got {earlier.shape[TIME_DIM]} and {later.shape[TIME_DIM]}"
        )
    weights = torch.linspace(1, 0, overlap, dtype=earlier.dtype, device=earlier.device).view(-1, 1, 1)
    blended = weights * earlier[..., -overlap:, :, :] + (1 - weights) * later[..., :overlap, :, :]
    out = torch.cat([earlier[..., :-overlap, :, :], blended, later[..., overlap:, :, :]], dim=TIME_DIM)
    return out.to(earlier)


@dataclass(frozen=True)
class DecodeStep:
    """Decode ``count`` latents from ``start`` and prepend them (the plan walks backwards in time)."""

    start: int
    count: int


@dataclass(frozen=True)
class DecodePlan:
    steps: tuple[DecodeStep, ...]
    overlap: int
    crop_front: int = 0
    crop_back: int = 0


def linear_plan(section_sizes: Sequence[int], window: int) -> DecodePlan:
    """FramePack's plan for sections generated backwards in time.

    ``section_sizes`` are the latents each section added, in generation order (the first is the
    end of the video). Each later decode covers its section plus the window after it.
    """
    total = sum(section_sizes)
    steps, end = [], total
    for k, size in enumerate(section_sizes):
        start = end - size
        count = size if k == 0 else min(size + window, total - start)
        steps.append(DecodeStep(start, count))
        end = start
    return DecodePlan(tuple(steps), overlap=frames_for_latents(window))


def ring_latents(main: torch.Tensor, connection: torch.Tensor, window: int) -> torch.Tensor:
    """``[conn[-window:], main, conn, main[-window:]]`` along the latent time axis (FramePackLoop's ring)."""
    return torch.cat([connection[:, :, -window:], main, connection, main[:, :, -window:]], dim=2)


def ring_plan(sections: int, window: int) -> DecodePlan:
    """Circular decode of a ring of ``sections`` windows (plus the wrap windows of ``ring_latents``).

    Walks the ring backwards in pairs of windows, once around and two pairs more, then crops the
    first ``4*window`` and last ``4*window - 3`` frames: the clip has ``4*window*sections`` frames and
    its last frame and its first are consecutive frames of one decode.
    """
    if sections < 2:
        raise ValueError(f"a ring needs at least 2 sections, got {sections}")
    steps = []
    for i in range(sections + 2):
        index = sections - 1 - i % sections
        steps.append(DecodeStep(index * window, window if i == 0 else 2 * window))
    return DecodePlan(
        tuple(steps),
        overlap=frames_for_latents(window),
        crop_front=4 * window,
        crop_back=frames_for_latents(window),
    )


def bridge_plan(head_latents: int, sections: int, window: int, tail_latents: int) -> DecodePlan:
    """FramePackConnect's decode of ``[head | sections x window generated | tail]`` latents.

    Walks backwards: the tail alone, then each generated window with the window after it (clamped
    to what exists), then the head with the first generated window. Consecutive decodes overlap by
    ``4*window - 3`` frames, or by all the frames so far when fewer exist (a tail shorter than a
    window); ``run_plan`` clamps. The result is ``4*total - 3`` frames, aligned as one causal decode.
    """
    if head_latents < 1 or tail_latents < 1 or sections < 1 or window < 1:
        raise ValueError(
            f"a bridge needs head, tail, sections and window >= 1, got {head_latents}, {tail_latents}, {sections}, {window}"
        )
    bridge_end = head_latents + sections * window
    total = bridge_end + tail_latents
    steps = [DecodeStep(bridge_end, tail_latents)]
    for k in reversed(range(sections)):
        start = head_latents + k * window
        steps.append(DecodeStep(start, min(2 * window, total - start)))
    steps.append(DecodeStep(0, head_latents + window))
    return DecodePlan(tuple(steps), overlap=frames_for_latents(window))


def run_plan(plan: DecodePlan, decode: Callable[[int, int], torch.Tensor]) -> torch.Tensor:
    """Execute ``plan`` with ``decode(start, count) -> frames (..., T, H, W)``.

    A decode that the plan repeats later is kept and reused (the ring's wrap-around), never redone.
    """
    remaining = {}
    for step in plan.steps:
        remaining[step] = remaining.get(step, 0) + 1
    cache: dict[DecodeStep, torch.Tensor] = {}
    video: torch.Tensor | None = None
    for step in plan.steps:
        remaining[step] -= 1
        current = cache.pop(step, None) if remaining[step] == 0 else cache.get(step)
        if current is None:
            current = decode(step.start, step.count)
            if remaining[step] > 0:
                cache[step] = current
        # A plan may start with fewer frames than the overlap (a connect's short tail): blend what exists.
        video = current if video is None else soft_append(current, video, min(plan.overlap, video.shape[TIME_DIM]))
    assert video is not None
    end = video.shape[TIME_DIM] - plan.crop_back
    return video[..., plan.crop_front : end, :, :]
