"""load_image: limits before decoding, EXIF orientation, every colour mode to RGB, clear errors."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fploopd.errors import InputError
from fploopd.media import MediaLimits, load_image

LIMITS = MediaLimits()


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (a decompression bomb's header, no pixels)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_rgb_png_round_trip(tmp_path: Path) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png", LIMITS)
    assert out.dtype == np.uint8 and out.shape == (24, 40, 3)
    assert np.array_equal(out, pixels)


def test_exif_rotated_jpeg_comes_back_upright(tmp_path: Path) -> None:
    stored = np.zeros((32, 64, 3), np.uint8)  # stored landscape, 64 wide
    stored[:8, :8] = (255, 0, 0)  # red marker at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: display rotated 90 degrees clockwise
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "phone.jpg", LIMITS)
    assert out.shape == (64, 32, 3)  # portrait
    top_right, top_left = out[:6, -6:].mean(axis=(0, 1)), out[:6, :6].mean(axis=(0, 1))
    assert top_right[0] > 200 and top_right[1] < 60
    assert top_left.max() < 60


def test_transparency_is_composited_on_white_by_default(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 0)  # fully transparent: the background shows
    rgba[0, 1] = (10, 20, 30, 255)  # opaque: unchanged
    rgba[0, 2] = (0, 0, 0, 128)  # half black over white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "sticker.png")
    out = load_image(tmp_path / "sticker.png", LIMITS)
    assert out.shape == (4, 4, 3)
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[0, 1]) == (10, 20, 30)
    assert 120 <= out[0, 2, 0] <= 135
    black = load_image(tmp_path / "sticker.png", LIMITS, background=(0, 0, 0))
    assert tuple(black[0, 0]) == (0, 0, 0)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "1", "LA"])
def test_other_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    base = Image.fromarray(np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    image = base.convert(mode)
    suffix = ".jpg" if mode == "CMYK" else ".png"
    image.save(tmp_path / f"img{suffix}")
    out = load_image(tmp_path / f"img{suffix}", LIMITS)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8


def test_palette_with_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.save(tmp_path / "p.png", transparency=0)
    out = load_image(tmp_path / "p.png", LIMITS)
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[1, 1]) == (200, 10, 10)


def test_16_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    grey = np.array([[0, 32896, 65535, 1000]], np.uint16)
    Image.fromarray(grey).save(tmp_path / "deep.png")
    out = load_image(tmp_path / "deep.png", LIMITS)
    assert out[0, :, 0].tolist() == [0, 128, 255, 4]
    assert np.array_equal(out[..., 0], out[..., 2])


def test_oversized_header_is_refused_before_decoding(tmp_path: Path) -> None:
    # 81 Mpx is under Pillow's own bomb threshold, so this is our check, and the pixels (which
    # are not there) are never decoded: a decode would report a truncated file instead.
    (tmp_path / "image.png").write_bytes(_png_declaring(9000, 9000))
    with pytest.raises(InputError) as e:
        load_image(tmp_path / "image.png", LIMITS)
    assert str(e.value) == "image.png is 9000x9000 = 81.0 Mpx; the limit is 64 Mpx"
    assert e.value.file == "image.png"


def test_pillow_bomb_guard_becomes_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "bomb.png").write_bytes(_png_declaring(20000, 20000))
    with pytest.raises(InputError, match=r"^bomb\.png is 400\.0 Mpx; the limit is 64 Mpx$"):
        load_image(tmp_path / "bomb.png", LIMITS)


def test_small_configured_limits(tmp_path: Path) -> None:
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    with pytest.raises(InputError, match=r"^a\.png is 64x64 = 4096 px; the limit is 1000 px$"):
        load_image(tmp_path / "a.png", MediaLimits(max_image_pixels=1000))
    with pytest.raises(InputError, match=r"^a\.png is \d+ bytes; the limit is 10 bytes$"):
        load_image(tmp_path / "a.png", MediaLimits(max_image_bytes=10))


def test_corrupt_truncated_missing_and_unsupported(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (tmp_path / "noise.png").write_bytes(np.random.default_rng(4).bytes(500))
    (tmp_path / "empty.png").write_bytes(b"")
    # EPS would run Ghostscript: not on the list of formats a dropped file may reach.
    (tmp_path / "art.eps").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    cases = {
        "cut.png": r"^cut\.png is corrupt or truncated",
        "noise.png": r"^noise\.png is not a readable image",
        "empty.png": r"^empty\.png is empty$",
        "art.eps": r"^art\.eps is not a readable image",
        "missing.png": r"^missing\.png does not exist$",
    }
    for name, pattern in cases.items():
        with pytest.raises(InputError, match=pattern) as e:
            load_image(tmp_path / name, LIMITS)
        assert e.value.file == name
