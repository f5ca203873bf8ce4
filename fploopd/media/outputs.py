"""Write the output kinds a sidecar asks for (``outputs``), under the project's names."""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import numpy as np
from loguru import logger

from fploopd.media.extras import write_gif, write_png_sequence, write_prores, write_webp
from fploopd.media.frames import check_frames
from fploopd.media.write import write_mp4

# kind -> what is appended to the base name (``<dir>/<name>_<seed>_1loop``).
OUTPUT_SUFFIXES = {"mp4": ".mp4", "webp": ".webp", "gif": ".gif", "prores": ".mov", "png": "_png"}


def output_path(base: Path, kind: str) -> Path:
    """``base`` plus the kind's suffix. Appended, not ``with_suffix``: job names may contain dots."""
    if kind not in OUTPUT_SUFFIXES:
        raise ValueError(f"unknown output kind {kind!r}; known: {', '.join(OUTPUT_SUFFIXES)}")
    return base.with_name(base.name + OUTPUT_SUFFIXES[kind])


def write_outputs(
    frames: np.ndarray, fps: float | Fraction, base: Path, kinds: Iterable[str], crf: int = 16
) -> list[Path]:
    """Write each requested kind of ``frames`` (in the order given), every one atomically; return the paths.

    ``png`` is a folder of numbered PNGs. The GIF may have fewer frames above 50 fps (see extras).
    """
    check_frames(frames)
    base = Path(base)
    kinds = list(dict.fromkeys(kinds))
    paths = [output_path(base, kind) for kind in kinds]  # unknown kinds fail before anything is written
    for kind, path in zip(kinds, paths, strict=True):
        if kind == "mp4":
            write_mp4(path, frames, fps, crf)
        elif kind == "webp":
            write_webp(path, frames, fps)
        elif kind == "gif":
            write_gif(path, frames, fps)
        elif kind == "prores":
            write_prores(path, frames, fps)
        else:
            write_png_sequence(path, frames)
        logger.info("wrote {}", path.name)
    return paths
