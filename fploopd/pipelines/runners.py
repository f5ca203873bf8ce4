"""Per-pipeline job runners: encode once, then generate, decode and write each seed's outputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from fploopd.engine.denoiser import TransformerFn
from fploopd.engine.sections import Checkpoint, Conditioning, fingerprint
from fploopd.errors import InputError
from fploopd.fsutil import sha256_file
from fploopd.media import (
    concat_repeat,
    latent_preview,
    load_image,
    save_png_atomic,
    tensor_to_frames,
    write_outputs,
)
from fploopd.media.limits import MediaLimits
from fploopd.pipelines import i2v, loop
from fploopd.pipelines.common import (
    Reporter,
    StartImage,
    encode_conditioning,
    make_model,
    prepare_image,
)
from fploopd.pipelines.job import OutputFile, Progress
from fploopd.pipelines.latentfile import save_latents
from fploopd.spec import JobSpec

if TYPE_CHECKING:
    from fploopd.engine.components import Components

# Settings that change only how results are written, not the latents a checkpoint holds. (Not fps:
# it decides which frames of an input video are read.)
_OUTPUT_ONLY = {"outputs", "crf", "decode", "loop_count", "count", "consecutive_seeds", "priority", "tags", "profile", "seed"}


@dataclass
class JobContext:
    spec: JobSpec
    inputs: dict[str, Path]
    out_dir: Path
    name: str
    components: Components
    work_dir: Path
    progress: Callable[[Progress], None] | None = None
    should_stop: Callable[[], bool] | None = None
    limits: MediaLimits = field(default_factory=MediaLimits)
    known_hashes: dict[str, str] | None = None  # the caller hashed the inputs already

    def reporter(self, generation: int, generations: int) -> Reporter:
        return Reporter(self.progress, self.should_stop, generation, generations)

    @cached_property
    def input_hashes(self) -> dict[str, str]:
        known = self.known_hashes or {}
        return {k: known.get(k) or sha256_file(p) for k, p in sorted(self.inputs.items())}

    def checkpoint(self, seed: int) -> Checkpoint:
        settings = self.spec.model_dump(exclude=_OUTPUT_ONLY)
        key = fingerprint(settings=settings, seed=seed, inputs=self.input_hashes, model=self.components.identity)
        return Checkpoint(self.work_dir / f"checkpoint-{seed}.safetensors", key)

    def base(self, seed: int, suffix: str = "") -> Path:
        return self.out_dir / (f"{self.name}_{seed}" + (f"_{suffix}" if suffix else ""))

    def input(self, field_name: str) -> Path:
        try:
            return self.inputs[field_name]
        except KeyError:
            raise InputError(f"the {self.spec.pipeline} pipeline needs a {field_name!r} file", field=field_name) from None


def _with_ext(base: Path, ext: str) -> Path:
    """Appended, never ``with_suffix``: job names may contain dots."""
    return base.with_name(base.name + ext)


def write_video(
    ctx: JobContext,
    frames: torch.Tensor | np.ndarray,
    seed: int,
    suffix: str,
    kind: str,
    reporter: Reporter | None = None,
    more_files: int = 0,
) -> list[OutputFile]:
    """Every requested output kind of one clip (decoded pixels, or uint8 frames); the mp4 is ``kind``.

    Counts the files on ``reporter`` as they are written, of a total that includes ``more_files``
    the caller writes afterwards."""
    reporter = reporter or Reporter()
    pixels = frames if isinstance(frames, np.ndarray) else tensor_to_frames(frames)
    fps, kinds = ctx.spec.fps, ctx.spec.outputs
    total = len(kinds) + more_files
    reporter.count("write", 0, total, "files")
    outputs = []
    for done, k in enumerate(kinds, start=1):
        (path,) = write_outputs(pixels, fps, ctx.base(seed, suffix), [k], ctx.spec.crf)
        outputs.append(OutputFile(path, kind if k == "mp4" else k, seed, len(pixels), fps))
        reporter.count("write", done, total, "files")
    return outputs


def has_n_loop(spec: JobSpec) -> bool:
    """A loop or video2loop job also writes the N-loop mp4 when ``loop_count`` > 1 and mp4 is asked for."""
    return spec.loop_count > 1 and "mp4" in spec.outputs


def write_loop(
    ctx: JobContext, frames: torch.Tensor | np.ndarray, seed: int, reporter: Reporter | None = None
) -> list[OutputFile]:
    """The 1-loop clip in every requested kind, and the N-loop mp4 as its packets repeated."""
    reporter = reporter or Reporter()
    extra = int(has_n_loop(ctx.spec))
    outputs = write_video(ctx, frames, seed, "1loop", "1loop", reporter, more_files=extra)
    if extra:
        n, one = ctx.spec.loop_count, next(o for o in outputs if o.kind == "1loop")
        path = concat_repeat(one.path, _with_ext(ctx.base(seed, f"loop_{n}"), ".mp4"), n)
        outputs.append(OutputFile(path, "loop", seed, one.frames * n, one.fps))
        reporter.count("write", len(outputs), len(outputs), "files")
    return outputs


def prepare_image_job(ctx: JobContext, generations: int) -> tuple[StartImage, Conditioning, TransformerFn]:
    """Once per job, whatever the seeds: the image fitted and encoded, the prompt, the model callable."""
    spec, components = ctx.spec, ctx.components
    reporter = ctx.reporter(1, generations)
    reporter.begin_encode()
    start = prepare_image(components, load_image(ctx.input("image"), ctx.limits), spec.resolution, reporter)
    cond = encode_conditioning(components, spec.prompt, spec.negative_prompt, spec, start.pixels, reporter)
    return start, cond, make_model(components, spec)


def run_loop(ctx: JobContext, seeds: list[int]) -> list[OutputFile]:
    spec, components = ctx.spec, ctx.components
    start, cond, model = prepare_image_job(ctx, len(seeds))
    outputs: list[OutputFile] = []
    for g, seed in enumerate(seeds, start=1):
        reporter = ctx.reporter(g, len(seeds))
        latents = loop.generate_latents(
            components, model, cond, start, spec, seed, checkpoint=ctx.checkpoint(seed), reporter=reporter
        )
        if not spec.decode:
            outputs += write_loop_latents(ctx, latents, seed, reporter)
            continue
        frames = loop.decode(components, latents, reporter)
        outputs += write_loop(ctx, frames, seed, reporter)
    return outputs


def write_loop_latents(
    ctx: JobContext, latents: loop.LoopLatents, seed: int, reporter: Reporter | None = None
) -> list[OutputFile]:
    """Latent-only mode: the loop's latents with their settings, and a preview strip per section."""
    reporter = reporter or Reporter()
    reporter.count("write", 0, 2, "files")
    base = ctx.base(seed, "latent")
    tensors = {"main": latents.main, "connection": latents.connection}
    data = _with_ext(base, ".safetensors")
    save_latents(data, tensors, ctx.spec, seed=seed, name=ctx.name, model=ctx.components.identity)
    reporter.count("write", 1, 2, "files")
    both = torch.cat([latents.main, latents.connection], dim=2)[0]
    preview = latent_preview(both, [latents.window] * latents.sections)
    png = save_png_atomic(preview, _with_ext(base, ".png"))
    reporter.count("write", 2, 2, "files")
    return [OutputFile(data, "latent", seed), OutputFile(png, "preview", seed)]


def run_i2v(ctx: JobContext, seeds: list[int]) -> list[OutputFile]:
    spec, components = ctx.spec, ctx.components
    start, cond, model = prepare_image_job(ctx, len(seeds))
    outputs: list[OutputFile] = []
    for g, seed in enumerate(seeds, start=1):
        reporter = ctx.reporter(g, len(seeds))
        latents = i2v.generate_latents(
            components, model, cond, start, spec, seed, checkpoint=ctx.checkpoint(seed), reporter=reporter
        )
        frames = i2v.decode(components, latents, spec, reporter)
        outputs += write_video(ctx, frames, seed, "", "video", reporter)
    return outputs


from fploopd.pipelines.connect import run_connect
from fploopd.pipelines.video2loop import run_video2loop

RUNNERS: dict[str, Callable[[JobContext, list[int]], list[OutputFile]]] = {
    "loop": run_loop,
    "i2v": run_i2v,
    "connect": run_connect,
    "video2loop": run_video2loop,
}
