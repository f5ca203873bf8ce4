"""FramePackVideo2LoopVideo: make one video loop by bridging its end back to its start.

The video's end plays the head and its start the tail of a connect (same layout, contexts and
minimum length). The 1-loop clip is every frame of the video, untouched, followed by the bridge's
frames alone; the N-loop file repeats its encoded packets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from fploopd.media import tensor_to_frames
from fploopd.media.limits import MediaLimits
from fploopd.pipelines.common import encode_conditioning, make_model
from fploopd.pipelines.connect import (
    bridge_frames,
    bucket_of,
    check_decode,
    context_4x,
    decode_bridge,
    encode_sides,
    encoded_frames,
    generate_bridge,
    read_clip,
)
from fploopd.spec import GenerationSettings

if TYPE_CHECKING:
    from fploopd.pipelines.job import OutputFile
    from fploopd.pipelines.runners import JobContext


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
    from fploopd.pipelines.runners import (
        write_loop,  # runners registers this runner: import late
    )

    spec, components = ctx.spec, ctx.components
    check_decode(spec)
    ctx.reporter(1, len(seeds)).phase("encode")
    video = load_video(ctx.input("video"), spec, ctx.limits)
    sides = encode_sides(components, video.head_encoded, video.tail_encoded)
    cond = encode_conditioning(components, spec.prompt, spec.negative_prompt, spec, video.frames[-1])
    model = make_model(components, spec)
    outputs: list[OutputFile] = []
    for g, seed in enumerate(seeds, start=1):
        reporter = ctx.reporter(g, len(seeds))
        bridge = generate_bridge(
            components, model, cond, sides, spec, seed, checkpoint=ctx.checkpoint(seed), reporter=reporter
        )
        reporter.phase("decode")
        decoded = decode_bridge(components, sides, bridge, spec.window)
        reporter.phase("write")
        pixels = loop_pixels(video, bridge_frames(decoded, sides.head.shape[2], bridge.shape[2]))
        outputs += write_loop(ctx, pixels, seed)
    return outputs
