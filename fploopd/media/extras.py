"""The optional output formats: animated WebP and GIF, ProRes 422 MOV, and a PNG sequence.

Animations loop forever (loop=0). Frame durations are whole milliseconds (WebP) or centiseconds
(GIF), rounded cumulatively so the loop's total length stays exact (30 fps GIF: 3, 4, 3, 3, 4, ...
cs). Browsers play GIF delays under 2 cs as 10 cs, so a GIF above 50 fps keeps every second (or
third...) frame instead. Both encoders fold a frame identical to the one before into its
predecessor's duration: timing is kept, the stored frame count can be lower.
"""

from __future__ import annotations

import math
import os
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from fploopd.fsutil import atomic_path, fsync_dir, public_mode, rename_durable
from fploopd.media.frames import check_frames
from fploopd.media.probe import VideoInfo
from fploopd.media.timing import as_rate, frame_durations
from fploopd.media.write import encode_video

GIF_MAX_FPS = 50
WEBP_QUALITY = 90


def write_webp(path: Path, frames: np.ndarray, fps: float | Fraction, *, quality: int = WEBP_QUALITY) -> Path:
    check_frames(frames)
    durations = frame_durations(len(frames), fps, Fraction(1, 1000))
    images = [Image.fromarray(f) for f in frames]
    with atomic_path(Path(path), suffix=".webp") as tmp:
        images[0].save(
            tmp,
            format="WEBP",
            save_all=True,
            append_images=images[1:],
            duration=durations,
            loop=0,
            quality=quality,
            method=4,
        )
    return Path(path)


def gif_rate(fps: float | Fraction) -> tuple[int, Fraction]:
    """(keep every n-th frame, resulting fps) so that no GIF frame is shorter than 2 cs."""
    rate = as_rate(fps)
    step = max(1, math.ceil(rate / GIF_MAX_FPS))
    return step, rate / step


def write_gif(path: Path, frames: np.ndarray, fps: float | Fraction) -> Path:
    """One 256-colour palette for the whole loop, no dithering.

    A shared palette cannot flicker from frame to frame, undithered pixels do not crawl in still
    areas, and it is about ten times faster than Pillow's per-frame adaptive palettes.
    """
    check_frames(frames)
    step, rate = gif_rate(fps)
    frames = frames[::step]
    # Pillow truncates milliseconds to centiseconds, so give it exact multiples of 10 ms.
    durations = [cs * 10 for cs in frame_durations(len(frames), rate, Fraction(1, 100))]
    palette = _shared_palette(frames)
    images = [Image.fromarray(f).quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
    with atomic_path(Path(path), suffix=".gif") as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)
    return Path(path)


def _shared_palette(frames: np.ndarray, samples: int = 16, side: int = 256) -> Image.Image:
    """Median-cut palette of a few evenly spaced frames, shrunk to at most ``side`` pixels."""
    picks = np.linspace(0, len(frames) - 1, min(len(frames), samples)).round().astype(int)
    tiles = []
    for i in picks:
        tile = Image.fromarray(frames[i])
        tile.thumbnail((side, side))
        tiles.append(np.asarray(tile))
    return Image.fromarray(np.concatenate(tiles, axis=0)).quantize(256, method=Image.Quantize.MEDIANCUT)


def write_prores(path: Path, frames: np.ndarray, fps: float | Fraction) -> VideoInfo:
    """ProRes 422 (prores_ks, profile standard, 10-bit 4:2:2) in a MOV, for editing tools."""
    check_frames(frames)
    if frames.shape[2] % 2:
        raise ValueError(f"ProRes 4:2:2 needs an even width, got {frames.shape[2]}")
    return encode_video(
        Path(path),
        frames,
        fps,
        codec="prores_ks",
        pix_fmt="yuv422p10le",
        container_format="mov",
        options={"profile": "2", "vendor": "apl0"},
    )


def write_png_sequence(folder: Path, frames: np.ndarray, *, prefix: str | None = None) -> Path:
    """``folder``/<prefix>_00000.png ...: written in a hidden temporary folder beside it, then renamed.

    Fails if ``folder`` already exists (a folder cannot be replaced atomically).
    """
    check_frames(frames)
    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    prefix = prefix if prefix is not None else folder.name.removesuffix("_png")
    digits = max(5, len(str(len(frames) - 1)))
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".part", dir=folder.parent))
    for i, frame in enumerate(frames):
        file = tmp / f"{prefix}_{i:0{digits}d}.png"
        with open(file, "wb") as f:
            Image.fromarray(frame).save(f, format="PNG")
            f.flush()
            os.fsync(f.fileno())
    fsync_dir(tmp)
    public_mode(tmp, folder=True)
    rename_durable(tmp, folder)
    return folder
