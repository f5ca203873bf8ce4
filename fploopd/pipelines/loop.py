"""FramePackLoop: a main video from the image, a connection video back to its start, one ring.

1. Main: FramePack's sections with ``padding_sections`` extra windows of blank positions, so the
   clip may start after a little motion; the input image is context, not a frame.
2. Connection: generated backwards with the same generator; its clean "pre" latent is the main
   video's last latent, its post/2x/4x context the front of a history that starts as the main video
   and grows with each connection section.
3. Ring ``[conn[-w:], main, conn, main[-w:]]`` decoded circularly, so the loop cut is seamless.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from fploopd.core.assemble import ring_latents, ring_plan
from fploopd.core.plan import connection_history_4x, inverted_section, original_paddings
from fploopd.engine.denoiser import TransformerFn
from fploopd.engine.sections import (
    Checkpoint,
    Conditioning,
    SectionContext,
)
from fploopd.media import latent_preview, save_png_atomic
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
from fploopd.pipelines.latentfile import save_latents
from fploopd.pipelines.progress import Reporter
from fploopd.pipelines.results import OutputFile
from fploopd.pipelines.writers import Destination, with_ext, write_loop
from fploopd.spec import GenerationSettings, JobSpec

if TYPE_CHECKING:
    from fploopd.engine.components import Components


@dataclass(frozen=True)
class LoopLatents:
    main: torch.Tensor  # (1, 16, main_sections * window, h, w)
    connection: torch.Tensor  # (1, 16, connection_sections * window, h, w)
    window: int

    @property
    def sections(self) -> int:
        return (self.main.shape[2] + self.connection.shape[2]) // self.window

    def ring(self) -> torch.Tensor:
        return ring_latents(self.main, self.connection, self.window)


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
) -> LoopLatents:
    reporter = reporter or Reporter()
    sample = SectionSampler(components, model, cond, settings, start.latent_size, reporter)
    window = settings.window
    main_pad, conn_pad = original_paddings(settings.main_sections), original_paddings(settings.connection_sections)
    n_main, total = len(main_pad), len(main_pad) + len(conn_pad)
    main_latents = n_main * window
    n4x_conn = connection_history_4x(main_latents)
    h, w = start.latent_size

    def step(k: int, history: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if k < n_main:
            context = image_context(start, history, (main_pad[k] + settings.padding_sections) * window, window)
        else:
            if k == n_main:  # the connection's history starts as the main video alone
                history = history[:, :, :main_latents]
            context = SectionContext(
                inverted_section(conn_pad[k - n_main] * window, window, n4x_conn),
                clean=torch.cat([history[:, :, -1:], history[:, :, :1]], dim=2),
                history_2x=history[:, :, 1:3],
                history_4x=history[:, :, 3 : 3 + n4x_conn],
            )
        new = sample(context, generator, k + 1, total)
        return torch.cat([new, history], dim=2)

    initial = torch.zeros(1, start.latent.shape[1], IMAGE_CONTEXT, h, w)
    history = drive_sections(total, initial, step, seed=seed, checkpoint=checkpoint, reporter=reporter)
    conn_latents = len(conn_pad) * window
    return LoopLatents(history[:, :, conn_latents : conn_latents + main_latents], history[:, :, :conn_latents], window)


def decode(components: Components, loop: LoopLatents, reporter: Reporter | None = None) -> torch.Tensor:
    """The 1-loop clip: ``4 * window * sections`` frames whose last frame flows into its first."""
    return decode_with_plan(components, loop.ring(), ring_plan(loop.sections, loop.window), reporter)


def run_loop(ctx: JobContext, seeds: list[int]) -> list[OutputFile]:
    """The loop job: encode once, then per seed the loop's latents, and its videos or its latent file."""
    spec, components = ctx.spec, ctx.components
    outputs: list[OutputFile] = []
    for seed, reporter, latents in image_generations(ctx, seeds, generate_latents):
        if not spec.decode:
            outputs += write_loop_latents(ctx.destination, spec, latents, seed, components.identity, reporter)
            continue
        frames = decode(components, latents, reporter)
        outputs += write_loop(ctx.destination, frames, seed, reporter)
    return outputs


def write_loop_latents(
    dest: Destination, spec: JobSpec, latents: LoopLatents, seed: int, model: dict, reporter: Reporter | None = None
) -> list[OutputFile]:
    """Latent-only mode: the loop's latents with their settings, and a preview strip per section."""
    reporter = reporter or Reporter()
    reporter.count("write", 0, 2, "files")
    base = dest.base(seed, "latent")
    tensors = {"main": latents.main, "connection": latents.connection}
    data = with_ext(base, ".safetensors")
    save_latents(data, tensors, spec, seed=seed, name=dest.name, model=model)
    reporter.count("write", 1, 2, "files")
    both = torch.cat([latents.main, latents.connection], dim=2)[0]
    preview = latent_preview(both, [latents.window] * latents.sections)
    png = save_png_atomic(preview, with_ext(base, ".png"))
    reporter.count("write", 2, 2, "files")
    return [OutputFile(data, "latent", seed), OutputFile(png, "preview", seed)]
