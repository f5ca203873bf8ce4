"""One job = ``count`` generations of one pipeline over one set of inputs: ``run_job``."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Union

from fploopd.media.limits import MediaLimits
from fploopd.pipelines.progress import Progress, SectionSink
from fploopd.pipelines.results import JobResult
from fploopd.spec import JobSpec

if TYPE_CHECKING:
    from fploopd.engine.components import Components
    from fploopd.engine.lora import LoraFile

# A job's LoRAs as the caller resolved them: (file read by ``engine.lora.load_lora``, or its path;
# scale), in the spec's order.
JobLoras = Sequence[tuple[Union["LoraFile", Path], float]]


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
    loras: JobLoras = (),
    on_section: SectionSink | None = None,
) -> JobResult:
    """Run every generation of ``spec`` and write its outputs into ``out_dir``.

    ``inputs`` maps the pipeline's media fields (``image``, ``video``, ``head``, ``tail``) to files.
    Section checkpoints live under ``work_dir``: calling again after a crash resumes from them and
    gives the same result as an uninterrupted run. ``should_stop`` is polled between sampling steps;
    when it returns true the job raises ``Cancelled`` and keeps its last checkpoint.
    ``input_hashes`` (field -> sha256) spares hashing inputs the caller hashed already; the
    checkpoints' key uses them.
    ``loras``: the files of ``spec.loras``, resolved by the caller (the sidecar names them by bare
    name, the one-shot commands by any path), with their scales. They are merged into the
    transformer before the first step (the set merged for an earlier job is switched exactly);
    ``components.identity`` then names each LoRA's name, sha256 and scale, and so do the section
    checkpoints' key, latent files and manifests.
    ``on_section(section, sections, generation, latents)`` receives each sampled section's latents
    (on the CPU already: no extra device sync), for a live preview.
    """
    # Here, not at the top: the runners import torch and the model code, which the daemon's
    # supervisor (it imports this package for pick_seeds) never needs.
    from fploopd.pipelines.context import JobContext
    from fploopd.pipelines.runners import RUNNERS

    if spec.pipeline not in RUNNERS:
        raise ValueError(f"spec.pipeline must be one of {sorted(RUNNERS)}, got {spec.pipeline!r}")
    if len(seeds) != spec.count:
        raise ValueError(f"{spec.count} generations need {spec.count} seeds, got {len(seeds)}")
    _check_loras(spec, loras)
    if loras or getattr(components, "lora_state", None) is not None:  # [] too: back to the base weights
        components.apply_loras(list(loras))
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
        on_section=on_section,
    )
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    outputs = RUNNERS[spec.pipeline](ctx, seeds)
    if progress is not None:  # a clean final state: not the last phase's half-way counts
        n = len(seeds)
        progress(Progress("done", n, n, done=len(outputs), total=len(outputs), unit="files"))
    return JobResult(outputs, list(seeds), {"total_s": round(time.monotonic() - started, 3)})


def _check_loras(spec: JobSpec, loras: JobLoras) -> None:
    """The caller's files must be the spec's: a job that names LoRAs never runs without them."""
    from fploopd.errors import FploopdError

    if len(loras) != len(spec.loras):
        raise FploopdError(
            f"the job names {len(spec.loras)} LoRA(s) ({', '.join(e.file for e in spec.loras) or 'none'}) "
            f"but {len(loras)} were resolved for it"
        )
    for entry, (_, scale) in zip(spec.loras, loras):
        if float(scale) != entry.scale:
            raise FploopdError(f"LoRA {entry.file}: scale {scale} resolved, the job says {entry.scale}")


__all__ = ["JobLoras", "run_job"]
