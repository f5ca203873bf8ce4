"""How the VAE decodes on a GPU: the decoder compiled (weights channels-last) for long-lived
workers, whole frames or horizontal strips (``vae_tiles``) where a tier has no room for a frame.

Measured on an H200 (docs/benchmarks.md): one section's decode 3.78 s -> 1.88 s compiled, within
fp16 rounding of the stock decode; eager channels-last alone is 1.6x slower, so it only comes with
the compile. The first decode of each new shape compiles (about a minute), which is why the
daemon's long-lived workers use it (beside a compile helper where there is room: ``compile_ahead``)
and one-shot commands do not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from fploopd.engine.compile import configure_dynamo, guarded, has_triton
from fploopd.engine.vae_tiles import decode_in_strips, strip_count, temporal_decode

if TYPE_CHECKING:
    from fploopd.engine.compile_ahead import CompileAhead


def compile_decoder(decoder: nn.Module) -> Callable[..., Any]:
    """``decoder.forward`` under torch.compile, unguarded: as a worker compiles it (``VaeAccel``) and
    as its compile helper does, whose graphs must be the worker's cache hits."""
    configure_dynamo()
    # One static graph per input shape (a job decodes two temporal tile lengths; a tier in strips,
    # one strip height): left to dynamo, the third shape got a graph symbolic in the frames and the
    # height, and the strip decodes that ran on it took 20-24 s of a loop job, against 5.1-5.4 s
    # for whole frames (H200, docs/benchmarks.md, sixth pass); on static graphs 5.4-7.8 s (seventh).
    return torch.compile(decoder.forward, dynamic=False)


class VaeAccel:
    """Switches ``vae``'s decoder between the stock eager one and a compiled one, and decodes whole
    frames or strips. The compiled callable is made once and kept here: a new one would compile
    every shape again."""

    def __init__(self, vae: nn.Module) -> None:
        self.vae = vae
        self._compiled: Callable[..., Any] | None = None
        self._channels_last = False
        self.room: int | None = None  # bytes a decode may use; None: whole frames (diffusers' decode)

    def apply(self, device: torch.device | str, *, compile: bool | None = None, room: int | None = None) -> dict[str, Any]:
        """Compile the decoder (and lay the weights out channels-last) on a CUDA device; ``None``:
        when Triton is there. ``room``: decode in strips that fit it (None: whole frames). Returns
        what was applied."""
        device = torch.device(device)
        self.room = room
        if compile is None:
            compile = device.type == "cuda" and has_triton()
        if device.type != "cuda" or not compile:
            self._uninstall()
            return {"compile": False, "strips": room is not None}
        return {**self.compile(), "strips": room is not None}

    def compile(self, ahead: CompileAhead | None = None) -> dict[str, Any]:
        """Install the compiled decoder, on any device (on the CPU inductor generates C++: the tests).
        With ``ahead`` the weights stay in the default layout while decodes run eagerly (eager
        channels-last is 1.6x slower) and turn channels-last at the first compiled decode. Either
        way the compiled decoder gets its input channels-last: one graph per shape, so a worker
        compiling on first use finds the helper's graphs in the cache."""
        decoder = self.vae.decoder
        self._uninstall()
        if self._compiled is None:
            self._compiled = guarded(decoder.forward, compile_decoder(decoder), "VAE decoder")
        if ahead is None:
            self._set_channels_last(True)
            decoder.forward = self._compiled_channels_last
        else:
            self._set_channels_last(False)
            decoder.forward = ahead.wrap("vae_decoder", decoder.forward, self._compiled_channels_last,
                                         layout=torch.channels_last_3d)  # fmt: skip
        return {"compile": True, "channels_last_3d": True, "compile_ahead": ahead is not None}

    def _compiled_channels_last(self, x: Tensor) -> Tensor:
        assert self._compiled is not None
        self._set_channels_last(True)
        return self._compiled(x.contiguous(memory_format=torch.channels_last_3d))

    def _set_channels_last(self, on: bool) -> None:
        if self._channels_last != on:
            self.vae.to(memory_format=torch.channels_last_3d if on else torch.contiguous_format)
            self._channels_last = on

    def restore(self) -> None:
        """The stock eager decoder in the default memory format, whole frames (a no-op when not applied)."""
        self._uninstall()
        self.room = None
        self._set_channels_last(False)

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


__all__ = ["VaeAccel", "compile_decoder"]
