"""Low-VRAM mode: the transformer's block weights live in pinned host memory and stream to the GPU
one block ahead of use on a side stream (``BlockStreamer``, the runner's ``offloader``)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import torch
from loguru import logger
from torch import Tensor, nn

from fploopd.engine.weights import STACKS, PreparedWeights


class BlockStreamer:
    """Keeps the weights of the transformer blocks in pinned host memory and copies each block to
    the GPU on a side stream ``prefetch`` blocks ahead of its use; a block's GPU copy is released
    as soon as it has run. At most ``prefetch + 2`` blocks are resident (~0.7 GB each at full size).

    The rest of the transformer (embedders, refiner, output) stays on the GPU (~0.8 GB)."""

    def __init__(self, stacks: Sequence[nn.ModuleList], device: torch.device | str, prefetch: int = 2) -> None:
        self.device = torch.device(device)
        self.prefetch = max(1, prefetch)
        self.stream = torch.cuda.Stream(self.device)
        self._host: dict[int, list[tuple[nn.Parameter | Tensor, Tensor]]] = {}
        for stack in stacks:
            for block in stack:
                self._host[id(block)] = [(p, _pinned_copy(p.data)) for p in _tensors(block)]
                for p, host in self._host[id(block)]:
                    p.data = host
        torch.cuda.empty_cache()
        self.bytes_per_pass = sum(h.numel() * h.element_size() for v in self._host.values() for _, h in v)

    def _load(self, block: nn.Module) -> torch.cuda.Event:
        with torch.cuda.stream(self.stream):
            for p, host in self._host[id(block)]:
                p.data = host.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        return event

    def _release(self, block: nn.Module, compute: torch.cuda.Stream) -> None:
        for p, host in self._host[id(block)]:
            p.data.record_stream(compute)  # memory returns to the pool only once compute is past it
            p.data = host

    def run(self, blocks: Sequence[nn.Module], fn: Callable[[nn.Module, Any], Any], state: Any) -> Any:
        compute = torch.cuda.current_stream(self.device)
        n = len(blocks)
        ready: dict[int, torch.cuda.Event] = {}
        done: deque[torch.cuda.Event] = deque()
        for i, block in enumerate(blocks):
            for j in range(i, min(n, i + 1 + self.prefetch)):
                if j not in ready:
                    ready[j] = self._load(blocks[j])
            compute.wait_event(ready.pop(i))
            state = fn(block, state)
            finished = torch.cuda.Event()
            finished.record(compute)
            self._release(block, compute)
            done.append(finished)
            if len(done) > self.prefetch:
                done.popleft().synchronize()  # back-pressure: keep the host from running ahead
        return state

    def restore(self) -> None:
        """Put every block back on the GPU (leaving low-VRAM mode)."""
        for params in self._host.values():
            for p, host in params:
                p.data = host.to(self.device)


def _tensors(module: nn.Module) -> list[Tensor]:
    return [*module.parameters(), *module.buffers()]


def _pinned_copy(t: Tensor) -> Tensor:
    host = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=True)
    host.copy_(t, non_blocking=False)
    return host


def enable_low_vram(
    transformer: nn.Module, device: torch.device | str, prefetch: int = 2, weights: PreparedWeights | None = None
) -> BlockStreamer:
    """Blocks to pinned host memory (streamed per use), everything else of ``transformer`` on
    ``device``. ``weights``: what was prepared for the transformer, dropped first (fused and FP8
    weights would stay resident; the streamed blocks run their plain linears)."""
    device = torch.device(device)
    t0 = time.perf_counter()
    if weights is not None:
        weights.unfuse()
        weights.remove_fp8()
    streamer = BlockStreamer([getattr(transformer, s) for s in STACKS], device, prefetch)
    for name, child in transformer.named_children():
        if name not in STACKS:
            child.to(device)
    logger.info(
        "low-VRAM mode: {:.1f} GB of block weights in pinned host memory ({:.1f} s)",
        streamer.bytes_per_pass / 1e9,
        time.perf_counter() - t0,
    )
    return streamer


__all__ = ["BlockStreamer", "enable_low_vram"]
