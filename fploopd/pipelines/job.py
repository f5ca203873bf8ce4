"""One job = ``count`` generations of one pipeline over one set of inputs."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fploopd.media.limits import MediaLimits
from fploopd.spec import JobSpec

if TYPE_CHECKING:
    from fploopd.engine.components import Components


@dataclass(frozen=True)
class Progress:
    """Where a job is. Indices are 1-based; ``step`` 0 means the phase has just begun.

    Sampling fills ``section``/``step``; the other phases count their own work in ``done`` of
    ``total`` ``unit`` (encode: encoders run; decode: VAE windows decoded; write: files written).
    A finished job's last report is ``phase == "done"`` with every output file counted.
    """

    phase: str  # "encode" | "sample" | "decode" | "write" | "done"
    generation: int = 1
    generations: int = 1
    section: int = 0
    sections: int = 0
    step: int = 0
    steps: int = 0
    done: int = 0
    total: int = 0
    unit: str = ""


def progress_text(p: dict | None) -> str:
    """One line for a progress dict (``dataclasses.asdict(Progress)``): "sample section 2/3 step 5/25",
    "decode 3/8 windows", "write 1/2 files", "done"; "starting" before the first report."""
    if not p:
        return "starting"
    phase = str(p.get("phase") or "starting")
    if phase == "done":
        return "done"
    parts = [phase]
    if phase == "sample" and p.get("sections"):
        parts.append(f"section {p.get('section', 0)}/{p['sections']}")
        if p.get("steps"):
            parts.append(f"step {p.get('step', 0)}/{p['steps']}")
    elif p.get("total"):
        parts.append(f"{p.get('done', 0)}/{p['total']} {p.get('unit') or ''}".rstrip())
    if (p.get("generations") or 1) > 1:
        parts.append(f"(generation {p.get('generation', 1)}/{p['generations']})")
    return " ".join(parts)


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


def pick_seeds(spec: JobSpec) -> list[int]:
    """Seeds for ``spec.count`` generations, decided once and recorded before any work.

    A given seed is used for the first generation; further ones are random unless the user asked
    for consecutive seeds.
    """
    if spec.seed is None:
        return [secrets.randbits(63) for _ in range(spec.count)]
    if spec.consecutive_seeds:
        return [spec.seed + i for i in range(spec.count)]
    return [spec.seed] + [secrets.randbits(63) for _ in range(spec.count - 1)]


def run_job(
    spec: JobSpec,
    inputs: dict[str, Path],
    out_dir: Path,
    *,
    name: str,
    seeds: list[int],
    components: Components,
    work_dir: Path,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    limits: MediaLimits | None = None,
    input_hashes: dict[str, str] | None = None,
) -> JobResult:
    """Run every generation of ``spec`` and write its outputs into ``out_dir``.

    ``inputs`` maps the pipeline's media fields (``image``, ``video``, ``head``, ``tail``) to files.
    Section checkpoints live under ``work_dir``: calling again after a crash resumes from them and
    gives the same result as an uninterrupted run. ``should_stop`` is polled between sampling steps;
    when it returns true the job raises ``Cancelled`` and keeps its last checkpoint.
    ``input_hashes`` (field -> sha256) spares hashing inputs the caller hashed already; the
    checkpoints' key uses them.
    """
    from fploopd.pipelines.runners import RUNNERS, JobContext

    if spec.pipeline not in RUNNERS:
        raise ValueError(f"spec.pipeline must be one of {sorted(RUNNERS)}, got {spec.pipeline!r}")
    if len(seeds) != spec.count:
        raise ValueError(f"{spec.count} generations need {spec.count} seeds, got {len(seeds)}")
    ctx = JobContext(
        spec=spec,
        inputs=inputs,
        out_dir=Path(out_dir),
        name=name,
        components=components,
        work_dir=Path(work_dir),
        progress=progress,
        should_stop=should_stop,
        limits=limits or MediaLimits(),
        known_hashes=input_hashes,
    )
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    outputs = RUNNERS[spec.pipeline](ctx, seeds)
    if progress is not None:  # a clean final state: not the last phase's half-way counts
        n = len(seeds)
        progress(Progress("done", n, n, done=len(outputs), total=len(outputs), unit="files"))
    return JobResult(outputs, list(seeds), {"total_s": round(time.monotonic() - started, 3)})
