"""How the VAE decodes on a GPU: the decoder compiled (weights channels-last) for long-lived
workers, whole frames or horizontal strips (``vae_tiles``) where a tier has no room for a frame.

Measured on an H200 (docs/benchmarks.md): one section's decode 3.78 s -> 1.88 s compiled, within
fp16 rounding of the stock decode; eager channels-last alone is 1.6x slower, so it only comes with
the compile. The first decode of each new shape compiles (about a minute), which is why the
daemon's long-lived workers use it and one-shot commands do not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from fploopd.engine.compile import configure_dynamo, guarded, has_triton
from fploopd.engine.vae_tiles import decode_in_strips, strip_count, temporal_decode


class VaeAccel:
    """Switches ``vae``'s decoder between the stock eager one and a compiled one, and decodes whole
    frames or strips. The compiled callable is made once and kept here: a new one would compile
    every shape again."""

    def __init__(self, vae: nn.Module) -> None:
        self.vae = vae
        self._compiled: Callable[..., Any] | None = None
        self.room: int | None = None  # bytes a decode may use; None: whole frames (diffusers' decode)

    def apply(self, device: torch.device | str, *, compile: bool | None = None, room: int | None = None) -> dict[str, Any]:
        """Compile the decoder (and lay the weights out channels-last) on a CUDA device; ``None``:
        when Triton is there. ``room``: decode in strips that fit it (None: whole frames). Returns
        what was applied."""
        device = torch.device(device)
        self.room = room
        applied: dict[str, Any] = {"compile": False, "strips": room is not None}
        if compile is None:
            compile = device.type == "cuda" and has_triton()
        if device.type != "cuda" or not compile:
            self._uninstall()
            return applied
        self.vae.to(memory_format=torch.channels_last_3d)
        decoder = self.vae.decoder
        if self._compiled is None:
            configure_dynamo()
            self._compiled = guarded(decoder.forward, torch.compile(decoder.forward), "VAE decoder")
        decoder.forward = self._compiled
        return {**applied, "compile": True, "channels_last_3d": True}

    def restore(self) -> None:
        """The stock eager decoder in the default memory format, whole frames (a no-op when not applied)."""
        self._uninstall()
        self.room = None
        self.vae.to(memory_format=torch.contiguous_format)

    def _uninstall(self) -> None:
        self.vae.decoder.__dict__.pop("forward", None)

    def decode(self, z: Tensor) -> Tensor:
        """Unscaled latents on the VAE's device and dtype -> pixels (B, 3, 4T-3, H, W)."""
        if self.room is None:
            return self.vae.decode(z).sample
        return temporal_decode(self.vae, z, self._decode_strips)

    def _decode_strips(self, z: Tensor) -> Tensor:
        count = strip_count(z.shape[2], z.shape[3], z.shape[4], self.room or 0)
        return decode_in_strips(self.vae.decoder, z, count, self.vae.spatial_compression_ratio)


__all__ = ["VaeAccel"]
