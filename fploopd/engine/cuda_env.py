"""A process's CUDA environment, set before CUDA starts in it.

**The allocator.** The streamed tiers free and allocate block-sized buffers every block and then a tiled decode asks
for larger tensors: with the default allocator the freed pieces stay reserved in their sizes, and
under a tight budget the decode fails beside gigabytes of them. Measured on an H100 with the process
held to 12, 8 and 6 GiB (docs/benchmarks.md, tier table): without expandable segments the loop job
took 1.45x the unlimited bf16 one at 12 and 8 GiB and ran out of memory at 6; with them 1.16x, 1.19x
and 1.16x. A value the user set is kept.

**The GPUs a worker sees.** A worker sees only its own GPUs, numbered from 0, so every worker
names its GPU ``cuda:0``. TorchInductor's cache keys hold the device, so with the real numbers a
box's second GPU compiled everything again: its worker's first loop job took 167 s where the first
GPU's took 65 s from the same cache; seeing only its own, 67.7 s (2 x H200, docs/benchmarks.md).
Nothing in a worker (a library that enumerates GPUs, a kernel timing that names no device) can
touch another worker's GPU either.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

ALLOC_CONF = "PYTORCH_CUDA_ALLOC_CONF"
VISIBLE = "CUDA_VISIBLE_DEVICES"
EXPANDABLE = "expandable_segments:True"


def prefer_expandable_segments() -> None:
    """Expandable segments unless the environment already configures the allocator."""
    os.environ.setdefault(ALLOC_CONF, EXPANDABLE)


def own_gpus(device: str, environ: MutableMapping[str, str] = os.environ) -> str:
    """Make ``device`` (``cuda:N`` or a group ``cuda:N+cuda:M``) the only GPUs this process sees and
    return its name in that numbering (``cuda:0``, ``cuda:0+cuda:1``); the CPU is returned as it is.
    ``cuda:N`` counts among the GPUs the environment already shows, as CUDA does."""
    members = device.split("+")
    if not all(m.startswith("cuda:") for m in members):
        return device
    shown = environ.get(VISIBLE)
    ids = [s.strip() for s in shown.split(",") if s.strip()] if shown is not None else None
    picked = []
    for m in members:
        index = int(m.split(":", 1)[1])
        if ids is not None and index >= len(ids):
            raise ValueError(f"{m} is not a GPU of this process: {VISIBLE}={shown!r} shows {len(ids)}")
        picked.append(ids[index] if ids is not None else str(index))
    environ[VISIBLE] = ",".join(picked)
    return "+".join(f"cuda:{i}" for i in range(len(members)))


__all__ = ["own_gpus", "prefer_expandable_segments"]
