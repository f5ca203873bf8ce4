"""Output writers: a clip's frames into every requested kind of file, named as docs/design.md §5 says.

They need only where the files go and how to write them (``Destination``), never a running job,
so decoding a latent file later writes exactly what the job would have written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fploopd.media import concat_repeat, tensor_to_frames, write_outputs
from fploopd.pipelines.progress import Reporter
from fploopd.pipelines.results import OutputFile
from fploopd.spec import GenerationSettings


@dataclass(frozen=True)
class Destination:
    """Where a job's files go and how they are written: ``<out_dir>/<name>_<seed>[_<suffix>]``, with
    the settings' fps, output kinds, crf and loop count."""

    out_dir: Path
    name: str
    settings: GenerationSettings

    def base(self, seed: int, suffix: str = "") -> Path:
        return self.out_dir / (f"{self.name}_{seed}" + (f"_{suffix}" if suffix else ""))


def with_ext(base: Path, ext: str) -> Path:
    """Appended, never ``with_suffix``: job names may contain dots."""
    return base.with_name(base.name + ext)


def write_video(
    dest: Destination,
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
    fps, kinds = dest.settings.fps, dest.settings.outputs
    total = len(kinds) + more_files
    reporter.count("write", 0, total, "files")
    outputs = []
    for done, k in enumerate(kinds, start=1):
        (path,) = write_outputs(pixels, fps, dest.base(seed, suffix), [k], dest.settings.crf)
        outputs.append(OutputFile(path, kind if k == "mp4" else k, seed, len(pixels), fps))
        reporter.count("write", done, total, "files")
    return outputs


def has_n_loop(settings: GenerationSettings) -> bool:
    """A loop or video2loop job also writes the N-loop mp4 when ``loop_count`` > 1 and mp4 is asked for."""
    return settings.loop_count > 1 and "mp4" in settings.outputs


def write_loop(
    dest: Destination, frames: torch.Tensor | np.ndarray, seed: int, reporter: Reporter | None = None
) -> list[OutputFile]:
    """The 1-loop clip in every requested kind, and the N-loop mp4 as its packets repeated."""
    reporter = reporter or Reporter()
    extra = int(has_n_loop(dest.settings))
    outputs = write_video(dest, frames, seed, "1loop", "1loop", reporter, more_files=extra)
    if extra:
        n, one = dest.settings.loop_count, next(o for o in outputs if o.kind == "1loop")
        path = concat_repeat(one.path, with_ext(dest.base(seed, f"loop_{n}"), ".mp4"), n)
        outputs.append(OutputFile(path, "loop", seed, one.frames * n, one.fps))
        reporter.count("write", len(outputs), len(outputs), "files")
    return outputs
