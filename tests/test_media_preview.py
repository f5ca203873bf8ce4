"""Latent previews: the fixed 16 -> RGB projection, one strip per section, saved atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fploopd.media import latent_preview, latents_to_rgb, save_png_atomic
from fploopd.media.preview import BACKGROUND, LATENT_RGB_BIAS, LATENT_RGB_FACTORS, STRIP_GAP


def test_projection_is_the_fixed_linear_map() -> None:
    latents = torch.zeros(16, 2, 3, 3)
    latents[10, 1] = 4.0  # channel 10 has all-positive factors (0.1166, 0.1627, 0.0962)
    rgb = latents_to_rgb(latents)
    assert rgb.shape == (2, 3, 3, 3) and rgb.dtype == np.uint8
    bias = np.clip(np.array(LATENT_RGB_BIAS), 0, 1) * 255
    assert rgb[0, 0, 0].tolist() == np.round(bias).astype(int).tolist()
    expected = np.clip(4 * np.array(LATENT_RGB_FACTORS[10]) + LATENT_RGB_BIAS, 0, 1) * 255
    assert rgb[1, 2, 2].tolist() == np.round(expected).astype(int).tolist()
    with pytest.raises(ValueError):
        latents_to_rgb(torch.zeros(4, 2, 3, 3))


def test_one_strip_per_section() -> None:
    t, h, w = 5, 4, 6
    latents = torch.zeros(1, 16, t, h, w)
    for i in range(t):
        latents[0, 10, i] = i  # brighter latent by latent
    image = latent_preview(latents, [2, 3], scale=1)
    assert image.size == (3 * w, 2 * h + STRIP_GAP)
    a = np.asarray(image)
    frame = latents_to_rgb(latents)
    assert np.array_equal(a[:h, w : 2 * w], frame[1])  # section 1, second latent
    assert np.array_equal(a[h + STRIP_GAP :, 2 * w :], frame[4])  # section 2, third latent
    assert (a[:h, 2 * w :] == BACKGROUND).all()  # section 1 is shorter: the rest is background
    big = latent_preview(latents, [2, 3])
    assert big.size[0] == image.size[0] * (big.size[0] // image.size[0]) and big.size[0] >= 3 * 64
    assert latent_preview(latents).size == (t * w * 11, h * 11)  # one strip; 64 / 6 -> x11
    with pytest.raises(ValueError, match="sum to the 5 latents"):
        latent_preview(latents, [2, 2])


def test_save_png_atomic(tmp_path: Path) -> None:
    image = latent_preview(torch.randn(16, 3, 4, 4), [3])
    path = save_png_atomic(image, tmp_path / "job_7_latent.png")
    assert [p.name for p in tmp_path.iterdir()] == ["job_7_latent.png"]
    with Image.open(path) as back:
        assert np.array_equal(np.asarray(back), np.asarray(image))
