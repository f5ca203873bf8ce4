"""Section plans: where each section's latents and context sit on FramePack's time axis.

FramePack conditions every section on clean latents (1x), a 2x-compressed and a 4x-compressed
history, each placed at integer positions of one time axis through rotary embeddings. These
layouts are plain data, kept here so every pipeline builds them the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SectionIndices:
    """Time-axis positions handed to the transformer for one section."""

    latents: tuple[int, ...]
    clean: tuple[int, ...]
    history_2x: tuple[int, ...]
    history_4x: tuple[int, ...]

    def tensors(self) -> dict[str, torch.Tensor]:
        """The diffusers keyword arguments (1-D long tensors)."""
        return {
            "indices_latents": torch.tensor(self.latents, dtype=torch.long),
            "indices_latents_clean": torch.tensor(self.clean, dtype=torch.long),
            "indices_latents_history_2x": torch.tensor(self.history_2x, dtype=torch.long),
            "indices_latents_history_4x": torch.tensor(self.history_4x, dtype=torch.long),
        }


def lay_out(*spans: tuple[str, int]) -> dict[str, tuple[int, ...]]:
    """Consecutive positions for named spans; a name used twice collects both spans in order."""
    out: dict[str, tuple[int, ...]] = {}
    position = 0
    for name, size in spans:
        if size < 0:
            raise ValueError(f"span {name!r} has negative size {size}")
        out[name] = out.get(name, ()) + tuple(range(position, position + size))
        position += size
    return out


def original_paddings(sections: int) -> list[int]:
    """FramePack's padding (in windows) per section, in generation order (backwards in time).

    Above four sections FramePack repeats 2 instead of counting down, which it found to look better.
    """
    if sections < 1:
        raise ValueError(f"sections must be >= 1, got {sections}")
    if sections > 4:
        return [3] + [2] * (sections - 3) + [1, 0]
    return list(reversed(range(sections)))


def inverted_section(blank: int, window: int, n4x: int = 16) -> SectionIndices:
    """``[1 pre | blank | window | 1 post | 2 (2x) | n4x (4x)]``: the original anti-drifting layout."""
    s = lay_out(("pre", 1), ("blank", blank), ("latents", window), ("post", 1), ("2x", 2), ("4x", n4x))
    return SectionIndices(s["latents"], s["pre"] + s["post"], s["2x"], s["4x"])


def forward_section(window: int) -> SectionIndices:
    """F1 (forward) layout: ``[1 start | 16 (4x) | 2 (2x) | 1 (1x) | window]``."""
    s = lay_out(("start", 1), ("4x", 16), ("2x", 2), ("1x", 1), ("latents", window))
    return SectionIndices(s["latents"], s["start"] + s["1x"], s["2x"], s["4x"])


def bridge_section(head_4x: int, blank: int, window: int, tail_4x: int) -> SectionIndices:
    """Connect layout ``[head 4x | 2 2x | 1 pre | blank | window | 1 post | 2 2x | tail 4x]``.

    Context comes from both sides: the head video before the bridge, the tail video after it.
    """
    s = lay_out(
        ("4x", head_4x),
        ("2x", 2),
        ("pre", 1),
        ("blank", blank),
        ("latents", window),
        ("post", 1),
        ("2x", 2),
        ("4x", tail_4x),
    )
    return SectionIndices(s["latents"], s["pre"] + s["post"], s["2x"], s["4x"])


def connection_history_4x(main_latents: int) -> int:
    """4x context length for a loop's connection video: what the main video can fill, at most 16.

    FramePackLoop hard-codes 16, 15 or 6 for main videos of >= 3, 2 or 1 sections of window 9,
    which is exactly ``min(16, main_latents - 3)``; this form also holds for other windows.
    """
    n = min(16, main_latents - 3)
    if n < 1:
        raise ValueError(f"a connection needs a main video of at least 4 latents, got {main_latents}")
    return n
