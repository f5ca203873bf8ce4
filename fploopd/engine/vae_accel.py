"""The VAE decoder compiled (weights channels-last) on a CUDA device, for long-lived workers.

Measured on an H200 (docs/benchmarks.md): one section's decode 3.78 s -> 1.88 s, within fp16
rounding of the stock decode; eager channels-last alone is 1.6x slower, so it only comes with the
compile. The first decode of each new shape compiles (about a minute), which is why the daemon's
long-lived workers use it and one-shot commands do not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fploopd.engine.compile import configure_dynamo, guarded, has_triton


class VaeAccel:
    """Switches ``vae``'s decoder between the stock eager one and a compiled one. The compiled
    callable is made once and kept here: a new one would compile every shape again."""

    def __init__(self, vae: nn.Module) -> None:
        self.vae = vae
        self._compiled: Callable[..., Any] | None = None

    def apply(self, device: torch.device | str, *, compile: bool | None = None) -> dict[str, Any]:
        """Compile the decoder (and lay the weights out channels-last) on a CUDA device; ``None``:
        when Triton is there. Returns what was applied."""
        device = torch.device(device)
        if compile is None:
            compile = device.type == "cuda" and has_triton()
        if device.type != "cuda" or not compile:
            return {"compile": False}
        self.vae.to(memory_format=torch.channels_last_3d)
        decoder = self.vae.decoder
        if self._compiled is None:
            configure_dynamo()
            self._compiled = guarded(decoder.forward, torch.compile(decoder.forward), "VAE decoder")
        decoder.forward = self._compiled
        return {"compile": True, "channels_last_3d": True}

    def restore(self) -> None:
        """The stock eager decoder in the default memory format (a no-op when not applied)."""
        self.vae.decoder.__dict__.pop("forward", None)
        self.vae.to(memory_format=torch.contiguous_format)


__all__ = ["VaeAccel"]
