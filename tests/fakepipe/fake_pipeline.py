"""A stand-in for run_job with the same contract: outputs named like the real ones, progress per
step, should_stop honoured between steps, per-section checkpoints that a rerun resumes from."""

from __future__ import annotations

import os
import sys
import time
import types
from pathlib import Path
from typing import ClassVar


class FakeComponents:
    identity: ClassVar[dict[str, object]] = {"model": "fake", "version": 1}


def load_components(paths, device, **kwargs):
    return FakeComponents()


def resolve(model, **kwargs):
    return model


def run_job(spec, inputs, out_dir, *, name, seeds, components, work_dir, progress=None, should_stop=None, limits=None):
    from fploopd.errors import Cancelled, InputError
    from fploopd.pipelines.progress import Progress
    from fploopd.pipelines.results import JobResult, OutputFile

    step_s = float(os.environ.get("FAKE_STEP_S", "0.02"))
    for path in inputs.values():
        if Path(path).read_bytes().startswith(b"CORRUPT"):
            raise InputError(f"{Path(path).name} is not a readable image", file=Path(path).name)
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    sections = spec.main_sections + spec.connection_sections
    outputs = []
    for g, seed in enumerate(seeds, 1):
        for s in range(1, sections + 1):
            mark = work_dir / f"section-{seed}-{s}"
            if mark.exists():
                continue
            for step in range(1, spec.steps + 1):
                if should_stop is not None and should_stop():
                    raise Cancelled("stopped")
                time.sleep(step_s)
                if progress:
                    progress(Progress("sample", g, len(seeds), s, sections, step, spec.steps))
            mark.write_text("done")
        frames = spec.window * 4 * sections
        if not spec.decode:
            for suffix in ("latent.safetensors", "latent.png"):
                (out_dir / f"{name}_{seed}_{suffix}").write_bytes(b"latent")
                outputs.append(OutputFile(out_dir / f"{name}_{seed}_{suffix}", "latent", seed))
            continue
        one = out_dir / f"{name}_{seed}_1loop.mp4"
        one.write_bytes(b"video" * 10)
        outputs.append(OutputFile(one, "1loop", seed, frames, float(spec.fps)))
        if spec.loop_count > 1:
            n = out_dir / f"{name}_{seed}_loop_{spec.loop_count}.mp4"
            n.write_bytes(b"video" * 10 * spec.loop_count)
            outputs.append(OutputFile(n, "loop", seed, frames * spec.loop_count, float(spec.fps)))
    return JobResult(outputs, list(seeds), {"total_s": 0.1})


def install() -> None:
    comp = types.ModuleType("fploopd.engine.components")
    comp.load_components = load_components
    sys.modules["fploopd.engine.components"] = comp
    from fploopd import pipelines
    from fploopd.engine import sources

    sources.resolve = resolve
    pipelines.run_job = run_job
