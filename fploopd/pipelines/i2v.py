"""Plain FramePack image-to-video: sections generated backwards in time from the input image."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from fploopd.core.assemble import linear_plan
from fploopd.core.plan import original_paddings
from fploopd.engine.denoiser import TransformerFn
from fploopd.engine.sections import Checkpoint, Conditioning
from fploopd.pipelines.common import (
    IMAGE_CONTEXT,
    SectionSampler,
    StartImage,
    decode_with_plan,
    drive_sections,
    image_context,
    image_generations,
)
from fploopd.pipelines.context import JobContext
from fploopd.pipelines.progress import Reporter
from fploopd.pipelines.results import OutputFile
from fploopd.pipelines.writers import write_video
from fploopd.spec import GenerationSettings

if TYPE_CHECKING:
    from fploopd.engine.components import Components


def generate_latents(
    components: Components,
    model: TransformerFn,
    cond: Conditioning,
    start: StartImage,
    settings: GenerationSettings,
    seed: int,
    *,
    checkpoint: Checkpoint | None = None,
    reporter: Reporter | None = None,
) -> torch.Tensor:
    """The video's latents in time order; the start latent first. ``main_sections`` sections."""
    reporter = reporter or Reporter()
    sample = SectionSampler(components, model, cond, settings, start.latent_size, reporter)
    window, paddings = settings.window, original_paddings(settings.main_sections)
    h, w = start.latent_size

    def step(k: int, history: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        new = sample(image_context(start, history, paddings[k] * window, window), generator, k + 1, len(paddings))
        if paddings[k] == 0:  # the earliest section begins with the input image itself
            new = torch.cat([start.latent, new], dim=2)
        return torch.cat([new, history], dim=2)

    initial = torch.zeros(1, start.latent.shape[1], IMAGE_CONTEXT, h, w)
    history = drive_sections(len(paddings), initial, step, seed=seed, checkpoint=checkpoint, reporter=reporter)
    return history[:, :, : history.shape[2] - IMAGE_CONTEXT]


def decode(
    components: Components, latents: torch.Tensor, settings: GenerationSettings, reporter: Reporter | None = None
) -> torch.Tensor:
    window, sections = settings.window, settings.main_sections
    sizes = [window] * (sections - 1) + [window + 1]
    return decode_with_plan(components, latents, linear_plan(sizes, window), reporter)


def run_i2v(ctx: JobContext, seeds: list[int]) -> list[OutputFile]:
    """The i2v job: encode once, then per seed the video's latents, decoded and written."""
    outputs: list[OutputFile] = []
    for seed, reporter, latents in image_generations(ctx, seeds, generate_latents):
        frames = decode(ctx.components, latents, ctx.spec, reporter)
        outputs += write_video(ctx.destination, frames, seed, "", "video", reporter)
    return outputs
