"""What every pipeline does the same way: conditioning, the model callable, sections with checkpoints,
the start image and decoding by plan."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch
from loguru import logger

from fploopd.core.assemble import DecodePlan, run_plan
from fploopd.core.plan import inverted_section
from fploopd.engine.denoiser import Guidance, TransformerFn, prompt_kwargs
from fploopd.engine.encode import (
    encode_image,
    encode_prompt,
    find_bucket,
    resize_and_center_crop,
    vae_decode,
    vae_encode,
)
from fploopd.engine.sections import (
    Checkpoint,
    Conditioning,
    SectionContext,
    SectionState,
    sample_section,
)
from fploopd.media import load_image
from fploopd.media.frames import frames_to_tensor
from fploopd.pipelines.context import JobContext
from fploopd.pipelines.progress import Reporter
from fploopd.spec import GenerationSettings

T = TypeVar("T")  # what an image job's generate function makes: loop latents, i2v latents

if TYPE_CHECKING:
    from fploopd.engine.components import Components

TRANSFORMER_DTYPE = torch.bfloat16


def guidance_of(settings: GenerationSettings) -> Guidance:
    return Guidance(distilled=settings.distilled_guidance, cfg=settings.cfg, rescale=settings.cfg_rescale)


def make_model(components: Components, settings: GenerationSettings) -> TransformerFn:
    """The transformer callable for this job's settings (TeaCache threshold included)."""
    return components.runner(teacache_threshold=settings.teacache_threshold)


def encode_conditioning(
    components: Components,
    prompt: str,
    negative_prompt: str,
    settings: GenerationSettings,
    image: np.ndarray,
    reporter: Reporter | None = None,
) -> Conditioning:
    """Prompt (and the negative only when cfg needs it) and the image's SigLIP embedding.

    Runs the second and third of the job's ``ENCODERS`` (the VAE was the first) and counts them."""
    device = components.device
    with components.on_device(components.text_encoder), components.on_device(components.text_encoder_2):
        positive = encode_prompt(components, prompt)
        negative = encode_prompt(components, negative_prompt) if settings.cfg != 1.0 else positive.zeros()
    if reporter is not None:
        reporter.encoded(2)
    with components.on_device(components.image_encoder):
        image_embeds = encode_image(components, image)
    if reporter is not None:
        reporter.encoded(3)
    g = settings.distilled_guidance
    return Conditioning(
        positive=prompt_kwargs(positive, g, device, TRANSFORMER_DTYPE),
        negative=prompt_kwargs(negative, g, device, TRANSFORMER_DTYPE),
        image_embeds=image_embeds.to(device, TRANSFORMER_DTYPE),
    )


@dataclass(frozen=True)
class SectionSampler:
    """What every section of one generation shares; calling it samples one planned section."""

    components: Components
    model: TransformerFn
    cond: Conditioning
    settings: GenerationSettings
    latent_size: tuple[int, int]
    reporter: Reporter

    def __call__(
        self, context: SectionContext, generator: torch.Generator, section: int, sections: int
    ) -> torch.Tensor:
        latents = sample_section(
            self.model,
            self.cond,
            context,
            latent_size=self.latent_size,
            steps=self.settings.steps,
            generator=generator,
            guidance=guidance_of(self.settings),
            device=self.components.device,
            on_step=self.reporter.step_hook(section, sections, self.settings.steps),
        )
        self.reporter.section_done(section, sections, latents)
        return latents


SectionStep = Callable[[int, torch.Tensor, torch.Generator], torch.Tensor]


def drive_sections(
    sections: int,
    initial: torch.Tensor,
    step: SectionStep,
    *,
    seed: int,
    checkpoint: Checkpoint | None,
    reporter: Reporter,
) -> torch.Tensor:
    """Run ``step(k, history, generator) -> history`` for each section, checkpointing after each.

    One CPU generator, seeded once, feeds every section in order. With a checkpoint on disk the
    run continues after its last completed section, with the generator state it had there, so the
    result is identical to an uninterrupted run.
    """
    generator = torch.Generator("cpu").manual_seed(seed)
    history, done = initial, 0
    state = checkpoint.load() if checkpoint is not None else None
    if state is not None:
        history, done = state.tensors["history"], state.done
        generator.set_state(state.rng_state)
        logger.info("resuming after section {} of {}", done, sections)
    for k in range(done, sections):
        reporter.phase("sample", k + 1, sections)
        history = step(k, history, generator)
        if checkpoint is not None:
            checkpoint.save(SectionState(k + 1, {"history": history}, generator.get_state()))
    return history


@dataclass(frozen=True)
class StartImage:
    """The input image fitted to its bucket, and its latent."""

    pixels: np.ndarray  # uint8 (H, W, 3) at the bucket size
    latent: torch.Tensor  # (1, 16, 1, H/8, W/8) float32, CPU

    @property
    def latent_size(self) -> tuple[int, int]:
        return self.latent.shape[-2], self.latent.shape[-1]


# Latents of history that condition a section generated backwards from an image: the latest 1x
# latent, then 2 at 2x and 16 at 4x (FramePack's clean_latents_post / 2x / 4x).
IMAGE_CONTEXT = 1 + 2 + 16


def image_context(start: StartImage, history: torch.Tensor, blank: int, window: int) -> SectionContext:
    """FramePack's conditioning for the section before ``history`` (newest latents first): the start
    image and the history's first latent as clean latents, its next 2 and 16 as the 2x and 4x ones."""
    return SectionContext(
        inverted_section(blank, window),
        clean=torch.cat([start.latent, history[:, :, :1]], dim=2),
        history_2x=history[:, :, 1:3],
        history_4x=history[:, :, 3:IMAGE_CONTEXT],
    )


def prepare_image(
    components: Components, image: np.ndarray, resolution: int, reporter: Reporter | None = None
) -> StartImage:
    height, width = find_bucket(image.shape[0], image.shape[1], resolution)
    fitted = resize_and_center_crop(image, width, height)
    with components.on_device(components.vae):
        latent = vae_encode(components, frames_to_tensor(fitted[None])[None])
    if reporter is not None:
        reporter.encoded(1)
    return StartImage(fitted, latent)


def decode_with_plan(
    components: Components, latents: torch.Tensor, plan: DecodePlan, reporter: Reporter | None = None
) -> torch.Tensor:
    """Frames (1, 3, T, H, W) in [-1, 1] for ``latents`` decoded by ``plan``.

    Counts the VAE windows as they finish (a window the plan repeats is decoded once, counted once)
    and honours a stop request between them."""
    reporter = reporter or Reporter()
    total, done = len(set(plan.steps)), 0
    reporter.count("decode", 0, total, "windows")

    def decode(start: int, count: int) -> torch.Tensor:
        nonlocal done
        reporter.check_stop()
        frames = vae_decode(components, latents[:, :, start : start + count])  # already on the CPU
        done += 1
        reporter.count("decode", done, total, "windows")
        return frames

    # Parked blocks first: the decode gets their memory (tiers.park_for_decode).
    with components.room_for_decode(), components.on_device(components.vae):
        return run_plan(plan, decode)


def image_generations(ctx: JobContext, seeds: list[int], generate: Callable[..., T]) -> Iterator[tuple[int, Reporter, T]]:
    """The generations of an image job (loop, i2v): the image and prompt encoded once, whatever the
    seeds; then per seed its reporter and the latents ``generate`` makes, resuming from checkpoints."""
    spec, components = ctx.spec, ctx.components
    reporter = ctx.reporter(1, len(seeds))
    reporter.begin_encode()
    start = prepare_image(components, load_image(ctx.input("image"), ctx.limits), spec.resolution, reporter)
    cond = encode_conditioning(components, spec.prompt, spec.negative_prompt, spec, start.pixels, reporter)
    model = make_model(components, spec)
    for g, seed in enumerate(seeds, start=1):
        reporter = ctx.reporter(g, len(seeds))
        latents = generate(components, model, cond, start, spec, seed, checkpoint=ctx.checkpoint(seed), reporter=reporter)
        yield seed, reporter, latents
