"""Load a still image as RGB uint8, safely: size limits before decoding, EXIF orientation, any mode.

Transparency is composited onto a solid background, white by default: a transparent sticker or
logo then looks as it does on a web page, and the result does not depend on whatever colour the
hidden pixels happen to hold. Animated files give their first frame.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fploopd.errors import InputError
from fploopd.media.limits import MediaLimits, check_file, mpx

# Decoders a dropped file may reach. Others (EPS runs Ghostscript, fonts, exotic formats) are refused.
IMAGE_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "GIF", "BMP", "TIFF", "TGA", "PPM", "AVIF")

WHITE = (255, 255, 255)


def load_image(path: Path, limits: MediaLimits, *, background: tuple[int, int, int] = WHITE) -> np.ndarray:
    """Read ``path`` as uint8 (H, W, 3) RGB, upright as its EXIF orientation says."""
    path = Path(path)
    name = path.name
    check_file(path, limits.max_image_bytes)
    Image.init()  # registers the plugins, so a format missing from this Pillow build is skipped, not a KeyError
    formats = [f for f in IMAGE_FORMATS if f in Image.OPEN]
    try:
        with Image.open(path, formats=formats) as im:
            # The header's size, checked before a single pixel is decoded.
            w, h = im.size
            if w * h > limits.max_image_pixels:
                raise InputError(
                    f"{name} is {w}x{h} = {mpx(w * h)}; the limit is {mpx(limits.max_image_pixels, limit=True)}",
                    file=name,
                )
            im.load()
            upright = ImageOps.exif_transpose(im)
            try:
                return _to_rgb(upright, background)
            except ValueError as e:  # a mode Pillow cannot convert (LAB, exotic TIFFs)
                raise InputError(
                    f"{name} has colour mode {upright.mode}, which cannot be converted to RGB ({e})", file=name
                ) from None
    except Image.DecompressionBombError as e:
        # Pillow's own (global) guard fired first (about 179 Mpx), before the size reached us.
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = mpx(int(found.group(1))) if found else "larger than Pillow will decode"
        raise InputError(
            f"{name} is {size}; the limit is {mpx(limits.max_image_pixels, limit=True)}", file=name
        ) from None
    except UnidentifiedImageError:
        raise InputError(f"{name} is not a readable image (supported: {', '.join(IMAGE_FORMATS)})", file=name) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as e:
        # Pillow reports truncated and corrupt data as OSError, and some plugins as SyntaxError.
        raise InputError(f"{name} is corrupt or truncated: {e}", file=name) from None


def _to_rgb(im: Image.Image, background: tuple[int, int, int]) -> np.ndarray:
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _high_depth_gray(im)
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        canvas.alpha_composite(rgba)
        return np.asarray(canvas.convert("RGB"))
    if im.mode == "CMYK" or im.mode != "RGB":
        return np.asarray(im.convert("RGB"))
    return np.asarray(im)


def _high_depth_gray(im: Image.Image) -> np.ndarray:
    """16-bit and 32-bit grey: scale to 8 bits (Pillow's convert would clip everything above 255)."""
    a = np.asarray(im).astype(np.float64)
    if im.mode == "F":
        scale = 255.0 if a.size and np.nanmax(a) <= 1.0 else 1.0
    elif im.mode.startswith("I;16") or (a.size and a.max() > 255):
        scale = 255.0 / 65535.0
    else:
        scale = 1.0
    gray = np.clip(np.nan_to_num(a * scale), 0, 255).round().astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)
