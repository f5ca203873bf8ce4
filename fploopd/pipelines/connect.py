"""FramePackConnect: generate a bridge from the end of one video (head) into the start of another (tail).

Both videos are read at the generation rate and the head's bucket. The last latents of the head and
the first of the tail are the bridge's context on both sides of one time axis
(``[head 4x | 2x | pre | blank | window | post | 2x | tail 4x]``); the bridge is generated backwards
from the tail, each new section prepended to the tail's history, as FramePack does. The output is the
head's untouched frames, then the decode of ``[head | bridge | tail]`` latents, then the tail's
untouched frames.

Improved over the original: any input rate is resampled and the tail is fitted to the head's size;
too-short inputs are an error naming the file; each side's encoded part is ``4n - 3`` frames, so its
``n`` latents cover exactly those frames and the kept frames join the decoded ones without the
3-frame jump FramePack's ``4n``-frame slices leave (the causal VAE ignores a slice's last 3 frames).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from fploopd.core.assemble import bridge_plan, frames_for_latents
from fploopd.core.plan import bridge_section, original_paddings
from fploopd.engine.denoiser import TransformerFn
from fploopd.engine.encode import find_bucket, vae_encode
from fploopd.engine.sections import (
    Checkpoint,
    Conditioning,
    SectionContext,
)
from fploopd.errors import InputError
from fploopd.media import frames_to_tensor, probe_video, read_video, tensor_to_frames
from fploopd.media.limits import MediaLimits
from fploopd.pipelines.common import (
    SectionSampler,
    decode_with_plan,
    drive_sections,
    encode_conditioning,
    make_model,
)
from fploopd.pipelines.context import JobContext
from fploopd.pipelines.progress import Reporter
from fploopd.pipelines.results import OutputFile
from fploopd.pipelines.writers import write_video
from fploopd.spec import GenerationSettings

if TYPE_CHECKING:
    from fploopd.engine.components import Components

# A side gives 3 latents of clean/2x context, then its 4x context. The tail needs 4 latents (its
# first is dropped); the head needs 4 too, not 3: with both at 3 usable latents the 4x history would
# be empty, which the model's 4x embedder cannot take. So 16 frames at the generation rate, each.
MIN_LATENTS = 4
MAX_4X = 16


@dataclass(frozen=True)
class Sides:
    """Context latents from both videos (float32, CPU)."""

    head: torch.Tensor  # (1, 16, head_4x + 3, h, w), its last latent ending at the head's last frame
    tail: torch.Tensor  # (1, 16, tail_4x + 3, h, w), starting at the tail's second frame
    head_4x: int
    tail_4x: int

    @property
    def latent_size(self) -> tuple[int, int]:
        return self.head.shape[-2], self.head.shape[-1]


def context_4x(frames: int, file: str, field: str, fps: float) -> int:
    """4x context length a video of ``frames`` (at the generation rate) gives: ``min(16, latents - 3)``."""
    latents = frames // 4
    if latents < MIN_LATENTS:
        raise InputError(
            f"{file} has {frames} frames at {fps:g} fps; the {field} video needs at least "
            f"{4 * MIN_LATENTS} frames ({MIN_LATENTS} latents)",
            file=file,
            field=field,
        )
    return min(MAX_4X, latents - 3)


def encoded_frames(n4x: int) -> int:
    """Frames a side encodes for ``n4x`` 4x latents plus 3 clean/2x latents."""
    return frames_for_latents(n4x + 3)


def bucket_of(path: Path, resolution: int, limits: MediaLimits) -> tuple[int, int]:
    info = probe_video(path, limits)
    return find_bucket(info.height, info.width, resolution)


def read_clip(path: Path, settings: GenerationSettings, size: tuple[int, int], limits: MediaLimits) -> np.ndarray:
    """All frames of ``path`` at the generation rate, resized and center-cropped to ``size``."""
    frames, _ = read_video(path, limits, fps=settings.fps, size=size)
    return frames


def encode_sides(
    components: Components, head_clip: np.ndarray, tail_clip: np.ndarray, reporter: Reporter | None = None
) -> Sides:
    """VAE-encode the head's end and the tail's start; drop the first tail latent (as FramePack does:
    a causal VAE's first latent is a single still frame, not a moment inside a motion)."""
    with components.on_device(components.vae):
        head = vae_encode(components, frames_to_tensor(head_clip)[None])
        tail = vae_encode(components, frames_to_tensor(tail_clip)[None])[:, :, 1:]
    if reporter is not None:
        reporter.encoded(1)
    return Sides(head, tail, head.shape[2] - 3, tail.shape[2] - 3)


def generate_bridge(
    components: Components,
    model: TransformerFn,
    cond: Conditioning,
    sides: Sides,
    settings: GenerationSettings,
    seed: int,
    *,
    checkpoint: Checkpoint | None = None,
    reporter: Reporter | None = None,
) -> torch.Tensor:
    """The bridge's latents in time order: ``connection_sections * window`` of them."""
    reporter = reporter or Reporter()
    sample = SectionSampler(components, model, cond, settings, sides.latent_size, reporter)
    window, paddings = settings.window, original_paddings(settings.connection_sections)
    head, n_head, n_tail = sides.head, sides.head_4x, sides.tail_4x

    def step(k: int, history: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        # history = [sections generated so far | tail]: the tail side's context is always its front.
        context = SectionContext(
            bridge_section(n_head, paddings[k] * window, window, n_tail),
            clean=torch.cat([head[:, :, -1:], history[:, :, :1]], dim=2),
            history_2x=torch.cat([head[:, :, -3:-1], history[:, :, 1:3]], dim=2),
            history_4x=torch.cat([head[:, :, :n_head], history[:, :, 3 : 3 + n_tail]], dim=2),
        )
        new = sample(context, generator, k + 1, len(paddings))
        return torch.cat([new, history], dim=2)

    history = drive_sections(len(paddings), sides.tail, step, seed=seed, checkpoint=checkpoint, reporter=reporter)
    return history[:, :, : len(paddings) * window]


def decode_bridge(
    components: Components, sides: Sides, bridge: torch.Tensor, window: int, reporter: Reporter | None = None
) -> torch.Tensor:
    """Frames (1, 3, 4*(head + bridge + tail) - 3, H, W) of the three parts decoded as one."""
    latents = torch.cat([sides.head, bridge, sides.tail], dim=2)
    plan = bridge_plan(sides.head.shape[2], bridge.shape[2] // window, window, sides.tail.shape[2])
    return decode_with_plan(components, latents, plan, reporter)


def bridge_frames(decoded: torch.Tensor, head_latents: int, bridge_latents: int) -> torch.Tensor:
    """The generated frames alone: after the head's ``4*head - 3`` frames, 4 per bridge latent."""
    first = frames_for_latents(head_latents)
    return decoded[:, :, first : first + 4 * bridge_latents]


@dataclass(frozen=True)
class ConnectInputs:
    """Both videos at the generation rate and the head's bucket, split into kept and encoded parts."""

    head: np.ndarray  # uint8 (T, H, W, 3)
    tail: np.ndarray
    head_4x: int
    tail_4x: int  # before the first tail latent is dropped

    @property
    def head_kept(self) -> np.ndarray:
        return self.head[: len(self.head) - encoded_frames(self.head_4x)]

    @property
    def head_encoded(self) -> np.ndarray:
        return self.head[len(self.head) - encoded_frames(self.head_4x) :]

    @property
    def tail_encoded(self) -> np.ndarray:
        return self.tail[: encoded_frames(self.tail_4x)]

    @property
    def tail_kept(self) -> np.ndarray:
        return self.tail[encoded_frames(self.tail_4x) :]

    def output_frames(self, sections: int, window: int) -> int:
        """Every head frame, the bridge, and every tail frame but the first (the bridge ends there)."""
        return len(self.head) + 4 * sections * window + len(self.tail) - 1


def load_inputs(head_path: Path, tail_path: Path, settings: GenerationSettings, limits: MediaLimits) -> ConnectInputs:
    size = bucket_of(head_path, settings.resolution, limits)
    head = read_clip(head_path, settings, size, limits)
    tail = read_clip(tail_path, settings, size, limits)
    return ConnectInputs(
        head,
        tail,
        context_4x(len(head), head_path.name, "head", settings.fps),
        context_4x(len(tail), tail_path.name, "tail", settings.fps),
    )


def connect_pixels(inputs: ConnectInputs, decoded: torch.Tensor) -> np.ndarray:
    """The output clip: the head's kept frames, the decoded frames, the tail's kept frames."""
    return np.concatenate([inputs.head_kept, tensor_to_frames(decoded), inputs.tail_kept])


def bridges(
    ctx: JobContext, seeds: list[int], sides: Sides, image: np.ndarray
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, Reporter]]:
    """Encode the prompt once, then per seed: ``(seed, bridge latents, decoded [head | bridge | tail],
    the generation's reporter)``; the caller writes the outputs and counts them on that reporter.

    ``image`` is what SigLIP sees: the frame just before the bridge."""
    spec, components = ctx.spec, ctx.components
    cond = encode_conditioning(components, spec.prompt, spec.negative_prompt, spec, image, ctx.reporter(1, len(seeds)))
    model = make_model(components, spec)
    for g, seed in enumerate(seeds, start=1):
        reporter = ctx.reporter(g, len(seeds))
        bridge = generate_bridge(
            components, model, cond, sides, spec, seed, checkpoint=ctx.checkpoint(seed), reporter=reporter
        )
        decoded = decode_bridge(components, sides, bridge, spec.window, reporter)
        yield seed, bridge, decoded, reporter


def run_connect(ctx: JobContext, seeds: list[int]) -> list[OutputFile]:
    first = ctx.reporter(1, len(seeds))
    first.begin_encode()
    inputs = load_inputs(ctx.input("head"), ctx.input("tail"), ctx.spec, ctx.limits)
    sides = encode_sides(ctx.components, inputs.head_encoded, inputs.tail_encoded, first)
    outputs: list[OutputFile] = []
    for seed, _, decoded, reporter in bridges(ctx, seeds, sides, inputs.head[-1]):
        outputs += write_video(ctx.destination, connect_pixels(inputs, decoded), seed, "connect", "connect", reporter)
    return outputs
