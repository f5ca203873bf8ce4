"""A cheap look at latents without the VAE: a fixed linear map from 16 channels to RGB.

The 16x3 factors and the bias are the ones FramePack's ``vae_decode_fake`` uses for HunyuanVideo
latents (taken there from ComfyUI); they expect latents already multiplied by the VAE scaling
factor, as FramePack keeps them, and give RGB in [0, 1]. One latent becomes one picture of
h x w, a preview of four video frames.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from fploopd.fsutil import atomic_path

if TYPE_CHECKING:
    import torch

LATENT_RGB_FACTORS = (
    (-0.0395, -0.0331, 0.0445),
    (0.0696, 0.0795, 0.0518),
    (0.0135, -0.0945, -0.0282),
    (0.0108, -0.0250, -0.0765),
    (-0.0209, 0.0032, 0.0224),
    (-0.0804, -0.0254, -0.0639),
    (-0.0991, 0.0271, -0.0669),
    (-0.0646, -0.0422, -0.0400),
    (-0.0696, -0.0595, -0.0894),
    (-0.0799, -0.0208, -0.0375),
    (0.1166, 0.1627, 0.0962),
    (0.1165, 0.0432, 0.0407),
    (-0.2315, -0.1920, -0.1355),
    (-0.0270, 0.0401, -0.0821),
    (-0.0616, -0.0997, -0.0727),
    (0.0249, -0.0469, -0.1703),
)
LATENT_RGB_BIAS = (0.0259, -0.0192, -0.0761)

# Small latents are enlarged (nearest) so a frame is at least this many pixels on its long side.
MIN_PREVIEW_SIDE = 64
BACKGROUND = (32, 32, 32)
STRIP_GAP = 4  # pixels between the strips of two sections


def latents_to_rgb(latents: torch.Tensor) -> np.ndarray:
    """(16, T, h, w) or (1, 16, T, h, w) -> uint8 (T, h, w, 3)."""
    import torch

    if latents.ndim == 5 and latents.shape[0] == 1:
        latents = latents[0]
    if latents.ndim != 4 or latents.shape[0] != len(LATENT_RGB_FACTORS):
        raise ValueError(f"latents must be (16, T, h, w), got {tuple(latents.shape)}")
    x = latents.detach().to("cpu", torch.float32)
    weight = torch.tensor(LATENT_RGB_FACTORS)  # (16, 3)
    rgb = torch.einsum("cthw,cr->thwr", x, weight) + torch.tensor(LATENT_RGB_BIAS)
    return (rgb.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).numpy()


def latent_preview(
    latents: torch.Tensor, sections: list[int] | None = None, *, scale: int | None = None
) -> Image.Image:
    """One horizontal strip per section (``sections`` are latent counts, summing to T), frames side by side.

    ``scale`` enlarges each latent pixel (nearest); by default small latents grow to about
    ``MIN_PREVIEW_SIDE`` pixels, real-size ones stay 1:1.
    """
    frames = latents_to_rgb(latents)
    t, h, w, _ = frames.shape
    sections = [t] if sections is None else list(sections)
    if any(n < 1 for n in sections) or sum(sections) != t:
        raise ValueError(f"sections {sections} must be positive and sum to the {t} latents")
    if scale is None:
        scale = max(1, -(-MIN_PREVIEW_SIDE // max(h, w)))
    strips = np.split(frames, np.cumsum(sections)[:-1])
    width = max(sections) * w
    canvas = np.empty((len(sections) * (h + STRIP_GAP) - STRIP_GAP, width, 3), np.uint8)
    canvas[:] = BACKGROUND
    for i, strip in enumerate(strips):
        row = strip.transpose(1, 0, 2, 3).reshape(h, len(strip) * w, 3)  # frames side by side
        top = i * (h + STRIP_GAP)
        canvas[top : top + h, : row.shape[1]] = row
    image = Image.fromarray(canvas)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    return image


def save_png_atomic(image: Image.Image, path: Path) -> Path:
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        image.save(tmp, format="PNG")
    return path


# An animated preview keeps its latents' size (80x80 at 640: viewers scale it up, and encoding
# stays cheap); only small latents are enlarged (nearest) to about MIN_PREVIEW_SIDE.
# One latent stands for four video frames: at 30 fps, 133 ms.
LATENT_FRAME_MS = 133


def save_animated_webp_atomic(frames: list[np.ndarray], path: Path, *, frame_ms: int = LATENT_FRAME_MS) -> Path:
    """uint8 (h, w, 3) frames as a looping animated WebP, replaced atomically (lossy, small)."""
    if not frames:
        raise ValueError("an animation needs at least one frame")
    h, w = frames[0].shape[:2]
    scale = max(1, -(-MIN_PREVIEW_SIDE // max(h, w)))
    images = [Image.fromarray(f) for f in frames]
    if scale > 1:
        images = [im.resize((w * scale, h * scale), Image.Resampling.NEAREST) for im in images]
    path = Path(path)
    with atomic_path(path, suffix=".webp") as tmp:
        images[0].save(
            tmp, format="WEBP", save_all=True, append_images=images[1:], duration=frame_ms, loop=0, quality=70, method=0
        )
    return path
