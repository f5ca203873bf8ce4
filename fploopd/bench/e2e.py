"""The bench's ``e2e`` stage: a loop job through ``run_job`` exactly as a daemon worker runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fploopd.bench.timing import Measurement, free, peak_gib, sync
from fploopd.engine import random_models as models

if TYPE_CHECKING:
    from fploopd.bench.run import Bench


def run_e2e_apart(bench: Bench) -> None:
    """The e2e stage in a child process of its own, for a run that measured other stages first.

    Those stages leave this process holding their compiled graphs and the optimised states of the
    shared models, so a loop job here is no worker's: on an H200 the warm job took 59.5 s after the
    section stage against 44.7 s in a fresh process, and its "first job" found the blocks compiled.
    The child runs ``python -m fploopd.bench --stages e2e``; its rows come back marked ``"process": "child"``."""
    cfg = bench.cfg
    bench.drop_models()  # the child needs the memory
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "e2e.json"
        cmd = [sys.executable, "-m", "fploopd.bench", "--model", cfg.model, "--device", cfg.device,
               "--stages", "e2e", "--low-vram-gib", str(cfg.low_vram_gib), "--out", str(out),
               *([] if cfg.compile_ahead else ["--no-compile-ahead"])]  # fmt: skip
        done = subprocess.run(cmd, check=False)
        if not out.exists():
            raise RuntimeError(f"the e2e child process wrote nothing (exit status {done.returncode})")
        child = json.loads(out.read_text())
    for name, row in child["results"].items():
        if name.startswith("e2e."):
            bench.results[name] = {**row, "process": "child"}
    bench.errors.update({f"{k} (child)": v for k, v in child["errors"].items()})


def run_e2e(bench: Bench) -> None:
    """A loop job through ``run_job``, image file in, mp4 files out: its wall time.

    Full size: main 1, connection 1, 25 steps, 640 bucket, with what ``load_components`` applies
    on a GPU (``components.accelerate``). Tiny: the tiny family from disk, a few steps at 64 px."""
    dev, full = bench.device, bench.cfg.size == "full"
    cache = compile_cache_files()  # before anything compiles: empty = a cold machine
    comps = worker_components(bench)
    ahead = start_compile_ahead(comps) if dev.type == "cuda" and bench.cfg.compile_ahead else None
    spec, image = loop_spec(full), job_image()
    note = f"main 1 + connection 1, {spec.steps} steps, {spec.resolution} bucket, 1-loop + 3-loop mp4"
    how = ("compile helper: calls eager until their graphs are compiled beside them" if ahead is not None
           else "compiling on first use")  # fmt: skip
    # First job of a worker, then (with the helper) a second, which may still run some calls eagerly,
    # and a third once the helper has finished (it loads the last graphs), then one with everything
    # compiled: what every later job costs.
    jobs = [("e2e.loop_job_first", how if cache else f"{how}; empty compile cache")]
    if ahead is not None:
        jobs += [("e2e.loop_job_second", how), ("e2e.loop_job_third", f"{how}; the helper finished before it")]
    jobs.append(("e2e.loop_job", "models warm"))
    for name, what in jobs:
        if name == "e2e.loop_job_third" and ahead is not None:
            ahead.wait(timeout=900)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        phases: dict[str, float] = {}
        wall, frames = time_job(dev, comps, spec, image, phases)
        extra: dict[str, Any] = {"compile_counters": compile_counters(), "phases_s": phases}
        if name == "e2e.loop_job_first":
            extra["compile_cache_files_at_start"] = cache
        if ahead is not None:
            extra["compile_ahead"] = ahead.summary()
        bench.record(name, Measurement([wall], peak_gib(dev)), note=f"{note} ({frames} frames); {what}", **extra)
    if ahead is not None:
        ahead.close()
    if full and dev.type == "cuda" and bench.cfg.low_vram_gib > 0:
        _low_vram_job(bench, comps, spec, image, note)
    comps = None
    free(dev)


def start_compile_ahead(comps: Any) -> Any:
    """A worker's compile helper beside ``comps`` (placed without a VRAM tier here, so the spare
    memory is what is free less the margin and the bf16-resident tier's own headroom)."""
    from fploopd.engine.compile_ahead import attach, helper_room
    from fploopd.engine.tiers import FULL_SIZE, margin, need_bytes

    free_bytes, _ = torch.cuda.mem_get_info(comps.device)
    headroom = need_bytes("bf16-resident", FULL_SIZE) - FULL_SIZE.resident_bytes
    return attach(comps, room=helper_room(max(0, free_bytes - margin(free_bytes) - headroom)))


def compile_counters() -> dict[str, int]:
    """inductor's cache hits and misses and dynamo's graphs in this process so far."""
    from torch._dynamo.utils import counters

    keys = ("fxgraph_cache_hit", "fxgraph_cache_miss", "fxgraph_cache_bypass")
    return {**{k: int(counters["inductor"][k]) for k in keys}, "unique_graphs": int(counters["stats"]["unique_graphs"])}


def compile_cache_files() -> int | None:
    """Files in torch.compile's cache folder now (None when the environment names none)."""
    folder = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not folder:
        return None
    return sum(len(files) for _, _, files in os.walk(folder))


def worker_components(bench: Bench) -> Any:
    """The whole model set placed as a worker with room for everything places it (bf16-resident:
    ``components.accelerate``, compiled decoder), or the tiny family from disk."""
    from fploopd.engine.components import accelerate

    dev = bench.device
    if bench.cfg.size != "full":
        return models.components("tiny", dev)
    bench._ensure_transformer()
    bench._ensure_vae()
    weights = bench.weights()
    weights.unfuse()
    weights.remove_fp8()
    bench.st.fused, bench.st.fp8_granularity = False, None
    comps = models.components("full", dev, bench.st.transformer, bench.st.vae)
    if dev.type == "cuda":
        comps.compile_vae = True
        accelerate(comps, weights=weights, vae_accel=bench.vae_accel())
    return comps


def loop_spec(full: bool, steps: int | None = None) -> Any:
    """The bench's loop job: full size main 1, connection 1, 25 steps, 640 bucket; tiny: a few steps at 64 px."""
    from fploopd.spec import JobSpec

    if full:
        return JobSpec(prompt="a lighthouse in a storm, waves crashing", pipeline="loop", resolution=640,
                       main_sections=1, connection_sections=1, steps=steps or 25, loop_count=3, seed=31337)  # fmt: skip
    return JobSpec(prompt="a lighthouse", pipeline="loop", resolution=64, window=4, main_sections=1,
                   connection_sections=1, steps=steps or 2, loop_count=3, seed=31337)  # fmt: skip


def job_image() -> Any:
    import numpy as np

    y, x = np.mgrid[0:640, 0:640]
    return np.stack([x % 256, y % 256, (x + y) // 5 % 256], axis=-1).astype(np.uint8)


def time_job(dev: torch.device, comps: Any, spec: Any, image: Any, phases: dict[str, float] | None = None) -> tuple[float, int]:
    """One loop job through ``run_job``, image file in, mp4 files out: its wall time and the
    1-loop's frame count. ``phases``, if given, gets the seconds from each phase's first progress
    report to the next phase's (encode, sample, decode, write; host clock: sampling's reports wait
    for the GPU, so each phase's GPU work lands in its own figure)."""
    from PIL import Image

    from fploopd.pipelines import run_job

    marks: list[tuple[str, float]] = []

    def progress(p: Any) -> None:
        if not marks or marks[-1][0] != p.phase:
            marks.append((p.phase, time.perf_counter()))

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.png"
        Image.fromarray(image).save(src)
        t0 = time.perf_counter()
        if getattr(comps, "compile_ahead", None) is not None:
            comps.compile_ahead.begin_job()  # as a worker does
        result = run_job(spec, {"image": src}, Path(tmp) / "out", name="bench", seeds=[31337],
                         components=comps, work_dir=Path(tmp) / "work", progress=progress)  # fmt: skip
        sync(dev)
        wall = time.perf_counter() - t0
    if phases is not None:
        ends = [t for _, t in marks[1:]] + [t0 + wall]
        for (phase, start), end in zip(marks, ends):
            if phase != "done":
                phases[phase] = phases.get(phase, 0.0) + end - start
    return wall, next(o.frames for o in result.outputs if o.kind == "1loop")


def _low_vram_job(bench: Bench, comps: Any, spec: Any, image: Any, note: str) -> None:
    """The same job the way an 8 GiB card runs it: ``place`` in low mode (transformer blocks
    streamed, Llama group-offloaded, the rest moved in per phase, VAE tiled), under a cap."""
    from PIL import Image

    from fploopd.engine.components import MODEL_NAMES, place
    from fploopd.pipelines import run_job

    dev = bench.device
    for name in MODEL_NAMES:
        getattr(comps, name).to("cpu")
    comps.vram = "low"
    free(dev)
    place(comps)
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    torch.cuda.set_per_process_memory_fraction(bench.cfg.low_vram_gib * 2**30 / total, index)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "in.png"
            Image.fromarray(image).save(src)
            torch.cuda.reset_peak_memory_stats(dev)
            t0 = time.perf_counter()
            run_job(spec, {"image": src}, Path(tmp) / "out", name="bench", seeds=[31337], components=comps,
                    work_dir=Path(tmp) / "work")  # fmt: skip
            sync(dev)
            wall = time.perf_counter() - t0
        high = bench.results.get("e2e.loop_job", {}).get("median_s")
        bench.record("e2e.loop_job_low_vram", Measurement([wall], peak_gib(dev)), limit_gib=bench.cfg.low_vram_gib,
                    vs_high_vram=(wall / high) if high else None,
                    note=f"{note}; load_components' low mode under a {bench.cfg.low_vram_gib} GiB cap")  # fmt: skip
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, index)
