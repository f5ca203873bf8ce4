"""The bench's ``tiers`` stage: the loop job as cards of each memory size run it.

For each budget (unlimited, 48, 24, 16, 12, 8 and 6 GiB by default) the tier is chosen as a worker
with that much free memory would choose it (``engine.tiers.choose_tier`` within the budget), the
models are laid out for it (``components.place_tier``: tiers only go down, so budgets run largest
first), the process is held to the budget (``torch.cuda.set_per_process_memory_fraction``, a little
under it: ``CAP_SLACK``) and the real peak is read back from the allocator. Each row: the tier, the peak, the warm loop-job time (main
1 + connection 1, 25 steps, 640; a short job first wherever a code path is new in this process, so
that compiling stays out) and its ratio to the unlimited bf16 job of the same run.

The host-to-device copy rate is measured once; streamed rows also say how many bytes each forward
streams, the seconds of copying per job at that rate and at a desktop's PCIe 4.0 x16 (about 25 GB/s
pinned), and an upper estimate of the job on such a desktop (every extra second of copying exposed).

On the CPU (the tiny family; the schema CI checks) the choice is made for the full-size weights on a
pretend FP8 GPU and laid out on the tiny model in proportion, so every tier's code path runs.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

import psutil
import torch

from fploopd.bench.timing import Measurement, free, sync

if TYPE_CHECKING:
    from fploopd.bench.run import Bench

GiB = 2**30
BUDGETS_GIB: tuple[float | None, ...] = (None, 48, 24, 16, 12, 8, 6)  # None: unlimited
PCIE4_GBS = 25.0  # PCIe 4.0 x16, pinned host-to-device copies as desktops measure them
CPU_CAPABILITY = (9, 0)  # the CPU run lays out what an FP8 GPU would get
CPU_FREE = 80 * GiB
CPU_HOST_FREE = 64 * GiB  # and a host with room to park blocks (the CPU run is the same everywhere)
# The allocator's cap sits this far under the budget: with expandable segments it checks a request
# before rounding it up to whole pages, so a process held to exactly 8 GiB reached 8.004 GiB reserved
# (H200 and H100 tier tables). A card's own limit is exact; the cap under the budget keeps the rows honest.
CAP_SLACK = 64 * 2**20


def parse_budgets(text: str) -> tuple[float | None, ...]:
    """``all`` or a comma list of GiB numbers and ``unlimited``."""
    if text.strip() == "all":
        return BUDGETS_GIB
    out: list[float | None] = []
    for word in (w.strip() for w in text.split(",") if w.strip()):
        out.append(None if word == "unlimited" else float(word))
    return tuple(out)


def label(budget: float | None) -> str:
    return "unlimited" if budget is None else f"{budget:g}gib"


def copy_rate_gbs(device: torch.device, gib: float = 1.0, repeats: int = 5) -> float | None:
    """Pinned host-to-device copy rate in GB/s (median of ``repeats``)."""
    if device.type != "cuda":
        return None
    host = torch.empty(int(gib * GiB), dtype=torch.uint8, pin_memory=True)
    dest = torch.empty_like(host, device=device)
    times = []
    for _ in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        dest.copy_(host, non_blocking=True)
        sync(device)
        times.append(time.perf_counter() - t0)
    del host, dest
    free(device)
    return host_bytes(gib) / sorted(times[1:])[repeats // 2] / 1e9


def host_bytes(gib: float) -> int:
    return int(gib * GiB)


def run_tiers(bench: Bench) -> None:
    from fploopd.bench.e2e import job_image, loop_spec, time_job, worker_components
    from fploopd.engine.components import place_tier
    from fploopd.engine.tiers import FULL_SIZE, VramRequest, choose_tier
    from fploopd.engine.vae_tiles import strip_count

    dev, full = bench.device, bench.cfg.size == "full"
    comps = worker_components(bench)
    spec, warm_spec, image = loop_spec(full, steps=bench.cfg.steps if full else None), loop_spec(full, steps=2), job_image()
    rate = copy_rate_gbs(dev)
    bench.record("tiers.h2d_copy", None, gb_s=rate, pcie4_gb_s=PCIE4_GBS,
                 note="pinned host-to-device copy of 1 GiB, median of 5")  # fmt: skip
    cuda = dev.type == "cuda"
    index = (dev.index if dev.index is not None else torch.cuda.current_device()) if cuda else None
    total = torch.cuda.get_device_properties(index).total_memory if cuda else CPU_FREE
    capability = torch.cuda.get_device_capability(index) if cuda else CPU_CAPABILITY
    start_free = torch.cuda.mem_get_info(index)[0] + torch.cuda.memory_reserved(index) if cuda else CPU_FREE
    # As a worker chooses: the host memory free with the models loaded (here: now, as built).
    host_free = psutil.virtual_memory().available if cuda else CPU_HOST_FREE
    base: float | None = None
    warmed: set[tuple[Any, ...]] = set()
    for budget in bench.cfg.tier_budgets:
        name = f"tiers.{label(budget)}"
        request = VramRequest(budget=int(budget * GiB)) if budget else VramRequest()
        choice = choose_tier(start_free, capability, request, FULL_SIZE, host_free=host_free)
        if not full:
            choice = _in_proportion(choice, comps)
        if choice.tier == "bf16-resident":
            if comps.vram != "high":
                bench.record(name, None, tier=choice.tier, budget_gib=budget,
                             note="skipped: tiers only go down in one process; put larger budgets first")  # fmt: skip
                continue
        else:
            place_tier(comps, choice)
        free(dev)
        if cuda and budget:
            torch.cuda.set_per_process_memory_fraction(min(1.0, (budget * GiB - CAP_SLACK) / total), index)
        try:
            key = (choice.fp8, choice.untiled_decode, choice.decode_room, choice.streamed, choice.tier,
                   choice.park_for_decode)
            if key not in warmed:  # compiles and first-use costs out of the timed job
                time_job(dev, comps, warm_spec, image)
                warmed.add(key)
            if cuda:
                torch.cuda.reset_peak_memory_stats(index)
            retries = _alloc_retries(index)
            phases: dict[str, float] = {}
            wall, frames = time_job(dev, comps, spec, image, phases)
            retries = _alloc_retries(index) - retries if cuda else None
            peak_reserved = torch.cuda.max_memory_reserved(index) / GiB if cuda else None
            peak = torch.cuda.max_memory_allocated(index) / GiB if cuda else None
        finally:
            if cuda:
                torch.cuda.set_per_process_memory_fraction(1.0, index)
        if budget is None and choice.tier == "bf16-resident":
            base = wall
        streamed = comps.streamer.bytes_per_pass if comps.streamer else 0
        forwards = 2 * spec.steps  # main 1 + connection 1, one forward a step (distilled guidance)
        copy_here = forwards * streamed / (rate * 1e9) if rate else None
        copy_pcie4 = forwards * streamed / (PCIE4_GBS * 1e9)
        bench.record(
            name, Measurement([wall], peak), tier=choice.tier, budget_gib=budget, reason=choice.reason,
            vs_unlimited_bf16=(wall / base) if base else None, peak_reserved_gib=peak_reserved,
            within_budget=(peak_reserved <= budget) if (budget and peak_reserved is not None) else None,
            alloc_retries=retries,
            resident_blocks=[choice.resident_doubles, choice.resident_singles], untiled_decode=choice.untiled_decode,
            decode_room_gib=None if choice.untiled_decode else choice.decode_room / GiB,
            park_for_decode=choice.park_for_decode, parked_gb=comps.parking.bytes / 1e9 if comps.parking else 0.0,
            phases_s=phases,
            # strips of a 5-latent temporal tile of a 640x640 frame (80 x 80 latents)
            decode_strips_640=1 if choice.untiled_decode else strip_count(5, 80, 80, choice.decode_room),
            streamed_gb_per_forward=streamed / 1e9, copy_s_per_job=copy_here, copy_s_per_job_pcie4=copy_pcie4,
            pcie4_estimate_s=(wall + max(0.0, copy_pcie4 - (copy_here or 0.0))) if streamed else wall,
            note=f"loop job, main 1 + connection 1, {spec.steps} steps, {spec.resolution} bucket ({frames} frames)",
        )  # fmt: skip
    comps = None
    free(dev)


def _alloc_retries(index: int | None) -> int:
    """How often the allocator has freed its cache and retried a cudaMalloc (at the budget's cap):
    each retry synchronizes and returns memory to the driver, the cost of running close to a cap."""
    if index is None:
        return 0
    return int(torch.cuda.memory_stats(index).get("num_alloc_retries", 0))


def _in_proportion(choice: Any, comps: Any) -> Any:
    """A full-size choice laid out on the tiny model: the same fraction of each stack resident."""
    from fploopd.engine.tiers import FULL_SIZE

    t = comps.transformer
    d, s = len(t.transformer_blocks), len(t.single_transformer_blocks)
    return dataclasses.replace(
        choice,
        resident_doubles=round(choice.resident_doubles * d / FULL_SIZE.doubles),
        resident_singles=round(choice.resident_singles * s / FULL_SIZE.singles),
        untiled_decode=False,
    )


__all__ = ["BUDGETS_GIB", "PCIE4_GBS", "copy_rate_gbs", "parse_budgets", "run_tiers"]
