"""How the VAE decodes on a GPU: the decoder compiled (weights channels-last) for long-lived
workers, whole frames or horizontal strips (``vae_tiles``) where a tier has no room for a frame.

Measured on an H200 (docs/benchmarks.md): one section's decode 3.78 s -> 1.88 s compiled, within
fp16 rounding of the stock decode; eager channels-last alone is 1.6x slower, so it only comes with
the compile. The first decode of each new shape compiles (about a minute): with a
``warmup.BackgroundCompiler`` that decode runs eagerly while the compiled decoder is warmed up on a
copy of its input in the background; without one it waits for the compile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from fploopd.engine.compile import configure_dynamo, guarded, has_triton
from fploopd.engine.vae_tiles import decode_bytes, decode_in_strips, strip_count, temporal_decode
from fploopd.engine.warmup import BackgroundCompiler

WARMUP_MARGIN = 2**30  # free memory kept beside a decode and its warm-up running side by side


class VaeAccel:
    """Switches ``vae``'s decoder between the stock eager one and a compiled one, and decodes whole
    frames or strips. The compiled callable is made once and kept here: a new one would compile
    every shape again."""

    def __init__(self, vae: nn.Module) -> None:
        self.vae = vae
        self._compiled: Callable[..., Any] | None = None
        self._eager: Callable[..., Any] | None = None
        self.room: int | None = None  # bytes a decode may use; None: whole frames (diffusers' decode)
        self.compiler: BackgroundCompiler | None = None

    def apply(self, device: torch.device | str, *, compile: bool | None = None, room: int | None = None,
              compiler: BackgroundCompiler | None = None) -> dict[str, Any]:
        """Compile the decoder (and lay the weights out channels-last) on a CUDA device; ``None``:
        when Triton is there. ``room``: decode in strips that fit it (None: whole frames).
        ``compiler``: warm new shapes up in the background, eager meanwhile. Returns what was applied."""
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
            self._eager = decoder.forward
            self._compiled = guarded(self._eager, torch.compile(self._eager), "VAE decoder")
        self.compiler = compiler
        decoder.forward = self._compiled if compiler is None else self._dispatch
        return {**applied, "compile": True, "channels_last_3d": True, "background_compile": compiler is not None}

    def restore(self) -> None:
        """The stock eager decoder in the default memory format, whole frames (a no-op when not applied)."""
        self._uninstall()
        self.room = None
        self.vae.to(memory_format=torch.contiguous_format)

    def _uninstall(self) -> None:
        self.vae.decoder.__dict__.pop("forward", None)
        self.compiler = None

    def decode(self, z: Tensor) -> Tensor:
        """Unscaled latents on the VAE's device and dtype -> pixels (B, 3, 4T-3, H, W)."""
        if self.room is None:
            return self.vae.decode(z).sample
        return temporal_decode(self.vae, z, self._decode_strips)

    def _decode_strips(self, z: Tensor) -> Tensor:
        count = strip_count(z.shape[2], z.shape[3], z.shape[4], self.room or 0)
        return decode_in_strips(self.vae.decoder, z, count, self.vae.spatial_compression_ratio)

    def _dispatch(self, z: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """The decoder's forward with a background compiler: compiled once warm for this shape."""
        assert self.compiler is not None and self._compiled is not None and self._eager is not None
        key = ("vae decoder", tuple(z.shape), z.stride(), z.dtype, str(z.device))
        if not args and not kwargs and self.compiler.wants(key) and _room_for_warmup(z):
            self.compiler.request(key, self._warmup_call(z), f"the VAE decoder for {tuple(z.shape)}")
        with self.compiler.running() as free:  # never beside a warm-up: torch.compile is not thread-safe
            if free and self.compiler.ready(key):
                return self._compiled(z, *args, **kwargs)
        return self._eager(z, *args, **kwargs)

    def _warmup_call(self, z: Tensor) -> Callable[[], object]:
        """The compiled decoder on a copy of ``z`` (same strides: the graph compiled on it is the one
        later calls find), then on one frame less: dynamo then compiles a graph with the frame count
        symbolic, which serves the shorter last temporal tile of a decode (3 of 5 frames at window 9)."""
        compiled = self._compiled
        assert compiled is not None
        copy = z.clone()

        def call() -> object:
            compiled(copy)
            if copy.shape[2] > 2:
                compiled(copy[:, :, 1:].clone())
            return None

        return call


def _room_for_warmup(z: Tensor) -> bool:
    """Whether this decode and its warm-up fit side by side in what the device has free."""
    if z.device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(z.device)
    free += torch.cuda.memory_reserved(z.device) - torch.cuda.memory_allocated(z.device)
    return free >= 2 * decode_bytes(z.shape[2], z.shape[3], z.shape[4], z.shape[1]) + WARMUP_MARGIN


__all__ = ["VaeAccel"]
