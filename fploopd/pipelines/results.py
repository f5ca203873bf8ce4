"""What a job gives back: the files it wrote and the seeds it used."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class OutputFile:
    path: Path
    kind: str  # "1loop", "loop", "connect", "i2v", "latent", "preview", "webp", "gif", "prores", "png"
    seed: int
    frames: int | None = None
    fps: float | None = None

    @property
    def duration_s(self) -> float | None:
        return None if self.frames is None or not self.fps else self.frames / self.fps


@dataclass
class JobResult:
    outputs: list[OutputFile]
    seeds: list[int]
    timings: dict[str, float] = field(default_factory=dict)
