"""The bench's ``context-parallel`` stage: one loop job on 1, 2, 4 GPUs (``--cp-devices``).

The loop job of the ``e2e`` stage (main 1 + connection 1, 25 steps, 640 bucket, full-size random
weights) through ``run_job`` as a worker runs it, in latent-only mode (``decode = false``): the
transformer is what a device group spreads; the VAE decode runs on rank 0 alone either way (a few
seconds compiled at 640) and would only add the same seconds to every row. For each device count the
job runs once short (1 step: compiles and first-use costs stay out) and then timed. Each row: the
wall time, its ratio to the one-GPU job of the same process, and the largest absolute deviation of
the final latents from the one-GPU job's.

On the CPU (the tiny family, gloo ranks) the same code runs: what CI checks.
"""

from __future__ import annotations

import functools
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fploopd.bench.timing import Measurement, free, peak_gib, sync
from fploopd.engine import random_models as models

if TYPE_CHECKING:
    from fploopd.bench.run import Bench


def group_devices(device: torch.device, count: int) -> list[str]:
    """``count`` devices from the bench's: cuda:0.. on a GPU, CPU ranks on the CPU."""
    if device.type != "cuda":
        return ["cpu"] * count
    if count > torch.cuda.device_count():
        raise RuntimeError(f"{count} GPUs asked for, {torch.cuda.device_count()} visible")
    return [f"cuda:{i}" for i in range(count)]


def follower_loader(bench: Bench) -> Any:
    """How a follower builds the same transformer as the bench's rank 0."""
    from fploopd.engine.device_group import model_loader

    if bench.cfg.size == "full":
        return functools.partial(models.build_transformer, "full", dtype=bench.dtype, seed=0)
    return model_loader("tiny", False)


def run_context_parallel(bench: Bench) -> None:
    from fploopd.bench.e2e import job_image, loop_spec, worker_components
    from fploopd.engine.device_group import DeviceGroup

    dev, full = bench.device, bench.cfg.size == "full"
    comps = worker_components(bench)
    spec = loop_spec(full).model_copy(update={"decode": False})
    warm = loop_spec(full, steps=1).model_copy(update={"decode": False})
    image = job_image()
    base_wall: float | None = None
    base_latents: torch.Tensor | None = None
    for count in bench.cfg.cp_devices:
        name = f"context_parallel.{count}"
        group = None
        job_comps = comps
        try:
            if count > 1:
                devices = group_devices(dev, count)
                if dev.type == "cuda" and dev.index not in (None, 0):
                    raise RuntimeError("the context-parallel stage runs rank 0 on cuda:0; use --device cuda")
                group = DeviceGroup.start(devices, follower_loader(bench))
                job_comps = group.attach(comps)
            _job(dev, job_comps, warm, image)  # compiles (new kernels, followers' graphs) out of the timing
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            wall, latents = _job(dev, job_comps, spec, image)
        finally:
            if group is not None:
                group.close()
        if count == 1:
            base_wall, base_latents = wall, latents
        dev_max = (latents - base_latents).abs().max().item() if base_latents is not None else None
        dev_mean = (latents - base_latents).abs().mean().item() if base_latents is not None else None
        bench.record(
            name, Measurement([wall], peak_gib(dev)), baseline=f"context_parallel.{bench.cfg.cp_devices[0]}",
            dev=(dev_max, dev_mean), devices=count,
            vs_one_device=(wall / base_wall) if base_wall else None,
            latent_abs_max=latents.abs().max().item(),
            note=f"loop job, main 1 + connection 1, {spec.steps} steps, {spec.resolution} bucket, latents only; "
                 f"{count} device(s), Ulysses context parallel; deviation: final latents against the 1-device job",
        )  # fmt: skip
    comps = None
    free(dev)


def _job(dev: torch.device, comps: Any, spec: Any, image: Any) -> tuple[float, torch.Tensor]:
    """One latent-only loop job through ``run_job``: its wall time and its latents (main | connection)."""
    from PIL import Image
    from safetensors.torch import load_file

    from fploopd.pipelines import run_job

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.png"
        Image.fromarray(image).save(src)
        t0 = time.perf_counter()
        result = run_job(spec, {"image": src}, Path(tmp) / "out", name="bench", seeds=[31337], components=comps,
                         work_dir=Path(tmp) / "work")  # fmt: skip
        sync(dev)
        wall = time.perf_counter() - t0
        data = next(o.path for o in result.outputs if str(o.path).endswith(".safetensors"))
        tensors = load_file(str(data))
    return wall, torch.cat([tensors["main"].flatten(), tensors["connection"].flatten()]).float()


__all__ = ["group_devices", "run_context_parallel"]
