"""The VAE decode in horizontal strips of one shape, for tiers without room for a whole frame.

diffusers' tiled decode cuts each temporal tile into 256-pixel squares every 192 pixels, so a
640-pixel section gives tiles of four shapes (32 and 8 latents a side): every shape is a new
graph to compile, and eagerly it cost about 11 s of a 48 s loop job on an H100 (docs/benchmarks.md,
VRAM tiers). Here each temporal tile (diffusers' own temporal tiling and blend, unchanged) is cut
into ``count`` strips of equal height spanning the whole width, evenly spaced so that neighbours
overlap by at least ``OVERLAP`` latents, and blended over the overlap with diffusers' linear ramp:
one shape per temporal tile length, so the compiled decoder serves every strip. At 640 that is 1.3x
the untiled decode's work in 4 strips (the 24 GiB tier) to 1.7x in 8 (4 GiB of room), against 1.6x
in diffusers' 16 tiles.

The decode's working memory grows with the strip's area: ``DECODE_BYTES_PER_LATENT`` is measured,
not derived (an H100, the 640 bucket: 14.4 GiB above the weights for a 5-latent temporal tile
decoded whole by the compiled decoder, peak of the 48 GiB tier row).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

OVERLAP = 8  # latents (64 pixels), as diffusers blends its tiles
DECODE_BYTES_PER_LATENT = 30 * 1024  # working memory per latent value of a temporal tile (see above)
PLAN_FRACTION = 0.8  # of the room: the allocator's reserve and fragmentation take the rest


def decode_bytes(frames: int, height: int, width: int, channels: int = 16) -> int:
    """Working memory of decoding one temporal tile of ``frames`` latents, ``height`` x ``width``."""
    return frames * height * width * channels * DECODE_BYTES_PER_LATENT


def strip_count(frames: int, height: int, width: int, room: int, overlap: int = OVERLAP) -> int:
    """The fewest strips whose decode fits ``room`` bytes (1: the whole frame fits), but no strip
    thinner than twice the overlap (thinner ones would be mostly overlap)."""
    count = 1
    while count < height:
        rows = strip_rows(height, count, overlap)
        if decode_bytes(frames, rows, width) <= room * PLAN_FRACTION or strip_rows(height, count + 1, overlap) < 2 * overlap:
            break
        count += 1
    return count


def strip_rows(height: int, count: int, overlap: int = OVERLAP) -> int:
    """The height of each of ``count`` strips covering ``height`` with ``overlap`` between neighbours."""
    if count <= 1:
        return height
    return min(height, math.ceil((height + (count - 1) * overlap) / count))


def strip_starts(height: int, rows: int, count: int) -> list[int]:
    """``count`` starts from 0 to ``height - rows``, evenly spaced (neighbours overlap by at least the
    planned overlap, one latent more where the spacing rounds down)."""
    if count <= 1:
        return [0]
    return [round(i * (height - rows) / (count - 1)) for i in range(count)]


def decode_in_strips(decode: Callable[[Tensor], Tensor], z: Tensor, count: int, scale: int,
                     overlap: int = OVERLAP) -> Tensor:
    """``decode`` (latents (B, C, T, h, w) -> pixels (B, 3, T', scale*h, scale*w)) over ``count``
    horizontal strips of ``z``, blended linearly where they overlap."""
    height = z.shape[3]
    rows = strip_rows(height, count, overlap)
    # A strip keeps the latents' layout (channels-last with a compiled decoder): the decoder's
    # graph and kernels were made for it.
    layout = torch.channels_last_3d if _channels_last(z) else torch.contiguous_format
    out: Tensor | None = None
    end = 0  # pixel rows written so far
    for start in strip_starts(height, rows, count):
        part = decode(z[:, :, :, start : start + rows].contiguous(memory_format=layout))
        if out is None:
            out = part.new_empty((*part.shape[:3], height * scale, part.shape[4]))
        begin = start * scale
        blend = end - begin
        if blend > 0:
            ramp = torch.arange(blend, device=part.device, dtype=part.dtype).div_(blend).view(blend, 1)
            out[..., begin:end, :] = out[..., begin:end, :] * (1 - ramp) + part[..., :blend, :] * ramp
        out[..., begin + max(blend, 0) : begin + rows * scale, :] = part[..., max(blend, 0) :, :]
        end = begin + rows * scale
    assert out is not None
    return out


def _channels_last(z: Tensor) -> bool:
    return z.is_contiguous(memory_format=torch.channels_last_3d) and not z.is_contiguous()


def temporal_decode(vae: torch.nn.Module, z: Tensor, decode_tile: Callable[[Tensor], Tensor]) -> Tensor:
    """diffusers' ``AutoencoderKLHunyuanVideo`` temporal tiling and blend (``_temporal_tiled_decode``)
    around ``decode_tile`` (post-quant latents of one temporal tile -> its pixels): the same frames
    as the stock decode when ``decode_tile`` is the stock decoder."""
    frames = z.shape[2]
    sample_frames = (frames - 1) * vae.temporal_compression_ratio + 1
    min_frames = vae.tile_sample_min_num_frames // vae.temporal_compression_ratio
    stride = vae.tile_sample_stride_num_frames // vae.temporal_compression_ratio
    blend = vae.tile_sample_min_num_frames - vae.tile_sample_stride_num_frames
    if not (vae.use_framewise_decoding and frames > min_frames):
        return decode_tile(vae.post_quant_conv(z))
    row = []
    for i in range(0, frames, stride):
        decoded = decode_tile(vae.post_quant_conv(z[:, :, i : i + min_frames + 1]))
        row.append(decoded[:, :, 1:] if i > 0 else decoded)
    kept = []
    for i, tile in enumerate(row):
        if i > 0:
            tile = vae.blend_t(row[i - 1], tile, blend)
            kept.append(tile[:, :, : vae.tile_sample_stride_num_frames])
        else:
            kept.append(tile[:, :, : vae.tile_sample_stride_num_frames + 1])
    return torch.cat(kept, dim=2)[:, :, :sample_frames]


__all__ = [
    "DECODE_BYTES_PER_LATENT",
    "OVERLAP",
    "decode_bytes",
    "decode_in_strips",
    "strip_count",
    "strip_rows",
    "strip_starts",
    "temporal_decode",
]
