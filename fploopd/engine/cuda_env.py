"""CUDA allocator settings for the tiers, set before the first CUDA allocation of a process.

The streamed tiers free and allocate block-sized buffers every block and then a tiled decode asks
for larger tensors: with the default allocator the freed pieces stay reserved in their sizes, and
under a tight budget the decode fails beside gigabytes of them. Measured on an H100 with the process
held to 12, 8 and 6 GiB (docs/benchmarks.md, tier table): without expandable segments the loop job
took 1.45x the unlimited bf16 one at 12 and 8 GiB and ran out of memory at 6; with them 1.16x, 1.19x
and 1.16x. A value the user set is kept.
"""

from __future__ import annotations

import os

ALLOC_CONF = "PYTORCH_CUDA_ALLOC_CONF"
EXPANDABLE = "expandable_segments:True"


def prefer_expandable_segments() -> None:
    """Expandable segments unless the environment already configures the allocator."""
    os.environ.setdefault(ALLOC_CONF, EXPANDABLE)


__all__ = ["prefer_expandable_segments"]
