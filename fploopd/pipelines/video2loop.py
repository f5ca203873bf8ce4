"""FramePackVideo2LoopVideo: make one video loop by bridging its end back to its start.

The video's end plays the head and its start the tail of a connect (same layout, contexts and
minimum length). The 1-loop clip is every frame of the video, untouched, followed by the bridge's
frames alone; the N-loop file repeats its encoded packets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fploopd.media import tensor_to_frames
from fploopd.media.limits import MediaLimits
from fploopd.pipelines.connect import (
    bridge_frames,
    bridges,
    bucket_of,
    context_4x,
    encode_sides,
    encoded_frames,
    read_clip,
)
from fploopd.pipelines.context import JobContext
from fploopd.pipelines.results import OutputFile
from fploopd.pipelines.writers import write_loop
from fploopd.spec import GenerationSettings


@dataclass(frozen=True)
class LoopVideo:
    """The video at the generation rate and its bucket, and its context length on both sides."""

    frames: np.ndarray  # uint8 (T, H, W, 3)
    n4x: int

    @property
    def head_encoded(self) -> np.ndarray:
        return self.frames[len(self.frames) - encoded_frames(self.n4x) :]

    @property
    def tail_encoded(self) -> np.ndarray:
        return self.frames[: encoded_frames(self.n4x)]

    def loop_frames(self, sections: int, window: int) -> int:
        return len(self.frames) + 4 * sections * window


def load_video(path: Path, settings: GenerationSettings, limits: MediaLimits) -> LoopVideo:
    frames = read_clip(path, settings, bucket_of(path, settings.resolution, limits), limits)
    return LoopVideo(frames, context_4x(len(frames), path.name, "video", settings.fps))


def loop_pixels(video: LoopVideo, bridge: torch.Tensor) -> np.ndarray:
    """The 1-loop clip: the whole video, then the bridge frames that lead back to its start."""
    return np.concatenate([video.frames, tensor_to_frames(bridge)])


def run_video2loop(ctx: JobContext, seeds: list[int]) -> list[OutputFile]:
    first = ctx.reporter(1, len(seeds))
    first.begin_encode()
    video = load_video(ctx.input("video"), ctx.spec, ctx.limits)
    sides = encode_sides(ctx.components, video.head_encoded, video.tail_encoded, first)
    outputs: list[OutputFile] = []
    for seed, bridge, decoded, reporter in bridges(ctx, seeds, sides, video.frames[-1]):
        pixels = loop_pixels(video, bridge_frames(decoded, sides.head.shape[2], bridge.shape[2]))
        outputs += write_loop(ctx.destination, pixels, seed, reporter)
    return outputs
