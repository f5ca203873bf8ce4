"""The decode in strips of one shape (engine/vae_tiles.py): geometry, blending, and diffusers' temporal tiling kept."""

from __future__ import annotations

import itertools

import pytest
import torch

from fploopd.engine.random_models import build_vae
from fploopd.engine.vae_accel import VaeAccel
from fploopd.engine.vae_tiles import (
    OVERLAP,
    PLAN_FRACTION,
    decode_bytes,
    decode_in_strips,
    strip_count,
    strip_rows,
    strip_starts,
    temporal_decode,
)

GiB = 2**30


@pytest.mark.parametrize("height, count", [(80, 3), (80, 4), (80, 6), (104, 5), (40, 2), (17, 2)])
def test_strips_cover_the_height_with_equal_rows_and_the_overlap(height: int, count: int) -> None:
    rows = strip_rows(height, count)
    starts = strip_starts(height, rows, count)
    assert len(starts) == count and starts[0] == 0 and starts[-1] + rows == height
    assert all(b - a <= rows - OVERLAP for a, b in itertools.pairwise(starts))  # neighbours overlap by >= OVERLAP
    assert all(b > a for a, b in itertools.pairwise(starts))


def test_strip_count_is_the_fewest_that_fit() -> None:
    whole = decode_bytes(5, 80, 80)
    assert round(whole / GiB, 1) == 14.6  # the measured 640 decode: 14.4 GiB above the weights
    assert strip_count(5, 80, 80, room=20 * GiB) == 1
    four = strip_count(5, 80, 80, room=6 * GiB)
    assert four == 4 and decode_bytes(5, strip_rows(80, 4), 80) <= 0.8 * 6 * GiB < decode_bytes(5, strip_rows(80, 3), 80)
    assert strip_count(5, 80, 80, room=4 * GiB) == 8  # the streamed tiers: 17 rows each
    assert strip_rows(80, strip_count(5, 80, 80, room=0)) >= 2 * OVERLAP  # never mostly overlap


def test_strips_of_a_pointwise_decode_equal_the_whole_decode() -> None:
    """Blending equal values gives those values: with a decode that looks at one latent only, the
    strips' result is the whole decode, so any misplaced row or wrong ramp shows."""
    z = torch.randn(1, 4, 3, 37, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(5))

    def decode(x: torch.Tensor) -> torch.Tensor:  # (B, C, T, h, w) -> (B, 3, T, 8h, 8w)
        return x[:, :3].repeat_interleave(8, dim=3).repeat_interleave(8, dim=4) * 2 - 1

    whole = decode(z)
    for count in (2, 3, 4):
        assert torch.allclose(decode_in_strips(decode, z, count, scale=8), whole, atol=1e-12)


def test_the_blend_ramps_from_the_upper_strip_to_the_lower() -> None:
    z = torch.zeros(1, 1, 1, 24, 1, dtype=torch.float64)
    seen: list[int] = []

    def decode(x: torch.Tensor) -> torch.Tensor:  # each strip paints its own index
        seen.append(len(seen))
        return torch.full((1, 1, 1, x.shape[3], 1), float(len(seen) - 1), dtype=torch.float64)

    out = decode_in_strips(decode, z, 2, scale=1).flatten()
    rows = strip_rows(24, 2)
    lower = strip_starts(24, rows, 2)[1]
    assert torch.all(out[:lower] == 0) and torch.all(out[rows:] == 1)
    ramp = out[lower:rows]
    assert ramp[0] == 0 and torch.all(ramp[1:] > ramp[:-1]) and ramp[-1] < 1


@pytest.fixture(scope="module")
def vae() -> torch.nn.Module:
    return build_vae("tiny", "cpu", torch.float32, seed=4).eval()


def test_temporal_tiling_is_diffusers_own(vae: torch.nn.Module) -> None:
    """With the stock decoder per temporal tile, the same frames as diffusers' decode, bit for bit."""
    z = torch.randn(1, vae.config.latent_channels, 9, 6, 6, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        ref = vae.decode(z).sample
        ours = temporal_decode(vae, z, vae.decoder)
    assert ref.shape == ours.shape == (1, 3, 33, 48, 48)
    assert torch.equal(ours, ref)


def test_decoding_in_strips_is_as_close_to_whole_frames_as_diffusers_tiles(vae: torch.nn.Module) -> None:
    """The VAE's mid-block attends over the whole frame, so any spatial tiling changes every pixel a
    little: strips of 20 rows stay as close to the whole-frame decode as diffusers' 20-row tiles."""
    z = torch.randn(1, vae.config.latent_channels, 9, 40, 6, generator=torch.Generator().manual_seed(9))
    accel = VaeAccel(vae)
    with torch.no_grad():
        ref = accel.decode(z)
        applied = accel.apply("cpu", room=int(decode_bytes(5, 20, 6) / PLAN_FRACTION))
        assert applied == {"compile": False, "strips": True}
        assert strip_count(5, 40, 6, accel.room or 0) == 3 and strip_rows(40, 3) == 19
        strips = accel.decode(z)
        accel.restore()
        assert torch.equal(accel.decode(z), ref)
        vae.enable_tiling(tile_sample_min_height=160, tile_sample_min_width=48, tile_sample_stride_height=96,
                          tile_sample_stride_width=48)
        stock_tiles = vae.decode(z).sample
        vae.disable_tiling()
    assert strips.shape == ref.shape == stock_tiles.shape == (1, 3, 33, 320, 48)
    ours, theirs = (strips - ref).abs().mean(), (stock_tiles - ref).abs().mean()
    assert 0 < ours <= 1.1 * theirs


def test_strips_keep_the_channels_last_layout_of_a_compiled_decoder() -> None:
    """A compiled decoder's graph was made for channels-last latents: strips of such latents stay so."""
    layouts: list[bool] = []

    def decode(x: torch.Tensor) -> torch.Tensor:
        layouts.append(x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous())
        return x[:, :3].repeat_interleave(8, dim=3).repeat_interleave(8, dim=4)

    z = torch.randn(1, 4, 3, 37, 11)
    decode_in_strips(decode, z.contiguous(memory_format=torch.channels_last_3d), 3, scale=8)
    decode_in_strips(decode, z, 3, scale=8)
    assert layouts == [True] * 3 + [False] * 3
