"""Resize to cover a target size, then center-crop: how FramePack fits inputs to its buckets."""

from __future__ import annotations

import numpy as np
from PIL import Image


def resize_center_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (H, W, 3) -> (height, width, 3): scale (Lanczos) so it covers the target, then crop the middle."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    scale = max(width / w, height / h)
    new_w, new_h = max(width, round(w * scale)), max(height, round(h * scale))
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.LANCZOS))
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return resized[top : top + height, left : left + width]
