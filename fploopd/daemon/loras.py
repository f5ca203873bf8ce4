"""The LoRAs a job names (``"loras": [{"file", "scale"}]``), found in the LoRA folders: the root's
``loras/``, then ``lora_dirs`` from ``fploopd.toml``.

Intake checks them (found, a safetensors file, within bounds) so that a typo fails the drop at once,
and waits for one still on its way like for media; dispatch finds them again, because a file may go
between intake and the job's turn. The worker reads them fully (``engine.lora.load_lora``); what it
finds wrong there fails the job as the input's fault.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fploopd.daemon.journal import Job
from fploopd.daemon.layout import Layout
from fploopd.daemon.settings import Settings
from fploopd.errors import InputError
from fploopd.lorafiles import FIELD, LoraError, LoraMissing, check_lora_file, find_lora
from fploopd.spec import JobSpec

JobLoraPaths = list[tuple[Path, float]]


@dataclass(frozen=True)
class LoraStatus:
    found: JobLoraPaths
    missing: list[str]  # names no LoRA folder has


def lora_folders(settings: Settings, layout: Layout) -> list[Path]:
    """Where a job's LoRAs are looked up, in order."""
    return [layout.loras, *(layout.root / d for d in settings.lora_dirs)]


def shown_folders(folders: list[Path], root: Path) -> str:
    """The folders as a message names them: relative to the root when inside it."""
    return ", ".join(f"{f.relative_to(root).as_posix() if f.is_relative_to(root) else f}/" for f in folders)


def locate_loras(spec: JobSpec, folders: list[Path], label: str) -> LoraStatus:
    """Each of ``spec.loras`` as (file, scale), or missing; an ``InputError`` naming ``label`` (the
    sidecar or the job), the entry and the LoRA for a file that is there but not usable."""
    found: JobLoraPaths = []
    missing: list[str] = []
    for i, entry in enumerate(spec.loras):
        try:
            path = find_lora(entry.file, folders)
            check_lora_file(path)
        except LoraMissing:
            missing.append(entry.file)
            continue
        except LoraError as exc:
            raise InputError(f"{label}: loras[{i}]: {exc.message}", field=FIELD, file=entry.file) from None
        found.append((path, entry.scale))
    return LoraStatus(found, missing)


def job_loras(spec: JobSpec, folders: list[Path], label: str, root: Path) -> JobLoraPaths:
    """The job's LoRA files now, when it is about to run: a missing one is an error too."""
    status = locate_loras(spec, folders, label)
    if status.missing:
        where = shown_folders(folders, root)
        raise InputError(
            f"{label}: loras: {status.missing[0]} is no longer in the LoRA folders ({where})", field=FIELD, file=status.missing[0]
        )
    return status.found


LoraSet = tuple[tuple[str, float], ...]
MAX_PASSES = 3  # the oldest job waits for at most this many jobs whose LoRAs a worker has merged


def lora_set(spec: Mapping[str, Any]) -> LoraSet:
    """The LoRAs of a job's recorded spec, as a worker has them merged after running it."""
    return tuple((str(e["file"]), float(e["scale"])) for e in spec.get("loras") or ())


class LoraAffinity:
    """Which queued job a worker takes among those of equal priority: one whose LoRA set it has
    merged already (a switch costs seconds, more with large LoRAs), else the oldest. The oldest job
    is passed over at most ``MAX_PASSES`` times, so a job with other LoRAs is never starved."""

    def __init__(self, max_passes: int = MAX_PASSES) -> None:
        self.max_passes = max_passes
        self.passed: dict[str, int] = {}  # job id -> times it was passed over at the head

    def choose(self, candidates: list[Job], merged: LoraSet) -> Job:
        """``candidates``: due jobs of one priority, oldest first."""
        head = candidates[0]
        ids = {j.id for j in candidates}
        self.passed = {k: n for k, n in self.passed.items() if k in ids}  # forget jobs taken, cancelled or outranked
        pick = head
        if self.passed.get(head.id, 0) < self.max_passes and lora_set(head.spec or {}) != merged:
            pick = next((j for j in candidates if lora_set(j.spec or {}) == merged), head)
        if pick is head:
            self.passed.pop(head.id, None)
        else:
            self.passed[head.id] = self.passed.get(head.id, 0) + 1
        return pick


__all__ = ["MAX_PASSES", "JobLoraPaths", "LoraAffinity", "LoraSet", "LoraStatus", "job_loras", "locate_loras", "lora_folders", "lora_set", "shown_folders"]
