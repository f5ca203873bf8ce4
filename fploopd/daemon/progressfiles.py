"""Live progress in the share, written by the supervisor: ``progress/<job-name>.json`` (state, phase,
generation, section i/n, step j/k, elapsed, an ETA from measured step times), rewritten atomically
at most every ``WRITE_S``. The worker writes ``progress/<job-name>.webp`` beside it (livepreview).

When the job ends both leave ``progress/``: the preview moves into the job's folder as
``preview.webp`` (its outputs on success, its inputs on failure, so it travels to outbox/ or
failed/ with them), the JSON goes; a job queued again loses both (its next try writes new ones);
at start, files of jobs that are not running are removed. The share never accumulates them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from fploopd.daemon.deliver import PREVIEW_FALLBACK, PREVIEW_FILE
from fploopd.daemon.journal import Job, JobState, Journal
from fploopd.daemon.layout import Layout
from fploopd.fsutil import write_json_atomic
from fploopd.pipelines.manifest import iso_time
from fploopd.pipelines.progress import progress_text

WRITE_S = 1.0  # a job's progress file is rewritten at most this often
STEP_SAMPLES = 20  # the ETA averages this many recent step times

# (pipeline, seconds) of each finished section, for the metrics
SectionObserver = Callable[[str, float], None]


def preview_name(folder: Path) -> str:
    """The preview's name in a job's folder: never a user's file."""
    return PREVIEW_FILE if not os.path.lexists(folder / PREVIEW_FILE) else PREVIEW_FALLBACK


@dataclass
class Track:
    """What the supervisor measured of one running job."""

    started: float = field(default_factory=time.time)
    last_write: float = 0.0
    last_step: tuple[float, tuple[int, int, int]] | None = None  # (monotonic, (generation, section, step))
    step_times: list[float] = field(default_factory=list)
    section_key: tuple[int, int] | None = None  # (generation, section) being sampled
    section_started: float = 0.0

    def step_s(self) -> float | None:
        return sum(self.step_times) / len(self.step_times) if self.step_times else None

    def observe(self, p: dict[str, Any], now: float) -> float | None:
        """Takes a progress report; returns the seconds of a section that just finished, if one did."""
        finished = None
        sampling = p.get("phase") == "sample"
        key = (int(p.get("generation") or 1), int(p.get("section") or 0))
        if self.section_key is not None and (not sampling or key != self.section_key):
            finished = now - self.section_started
            self.section_key = None
        if sampling and self.section_key is None and key[1]:
            self.section_key, self.section_started = key, now
        if sampling and key[1]:  # step 0 is the section's start: its first step is timed from there
            position = (key[0], key[1], int(p.get("step") or 0))
            if self.last_step is not None and self.last_step[1][:2] == position[:2] and position[2] > self.last_step[1][2]:
                per_step = (now - self.last_step[0]) / (position[2] - self.last_step[1][2])
                self.step_times = [*self.step_times[-(STEP_SAMPLES - 1) :], per_step]
            self.last_step = (now, position)
        return finished


def steps_left(p: dict[str, Any]) -> int | None:
    """Sampling steps still to run in this job, from a sampling report; None outside sampling."""
    if p.get("phase") != "sample" or not p.get("steps") or not p.get("sections"):
        return None
    steps, sections = int(p["steps"]), int(p["sections"])
    generation, generations = int(p.get("generation") or 1), int(p.get("generations") or 1)
    this_section = steps - int(p.get("step") or 0)
    later_sections = (sections - int(p.get("section") or 1)) * steps
    return this_section + later_sections + (generations - generation) * sections * steps


class ProgressFiles:
    def __init__(self, layout: Layout, on_section: SectionObserver | None = None) -> None:
        self.layout = layout
        self.on_section = on_section
        self.tracks: dict[str, Track] = {}
        self.warned = False

    def update(self, job: Job, p: dict[str, Any], *, force: bool = False) -> None:
        """A progress report of a running job: measured, and written when WRITE_S has passed."""
        now = time.monotonic()
        track = self.tracks.setdefault(job.id, Track())
        section_s = track.observe(p, now)
        if section_s is not None and self.on_section is not None:
            self.on_section(job.pipeline or "", section_s)
        if not force and now - track.last_write < WRITE_S:
            return
        track.last_write = now
        self._write(self.layout.progress_json(job.name), self.document(job, p, track))

    def document(self, job: Job, p: dict[str, Any], track: Track) -> dict[str, Any]:
        left, step_s = steps_left(p), track.step_s()
        return {
            "job": job.id,
            "name": job.name,
            "pipeline": job.pipeline,
            "state": "running",
            "text": progress_text(p),
            **{k: p.get(k) for k in ("phase", "generation", "generations", "section", "sections", "step", "steps", "done", "total", "unit")},
            "started_at": iso_time(track.started),
            "elapsed_s": round(time.time() - track.started, 1),
            "step_s": None if step_s is None else round(step_s, 3),
            # The sampling still to do at the measured pace (decoding and writing come after it).
            "eta_s": None if left is None or step_s is None else round(left * step_s, 1),
            "preview": f"{job.name}.webp",
            "updated_at": iso_time(time.time()),
        }

    def finishing(self, job: Job) -> None:
        """The worker made the outputs: the preview joins them as preview.webp before the job is
        recorded done (a crash right after that keeps it; a run again replaces it)."""
        self._move_preview(job, self.layout.out_dir(job.id), PREVIEW_FILE)

    def ended(self, job: Job, journal: Journal) -> None:
        """The run is over (the journal says how): a failed or cancelled job's preview goes into its
        inputs, which travel to failed/; the JSON goes; for a job queued again both go."""
        self.tracks.pop(job.id, None)
        now = journal.get(job.id)
        if now.state in (JobState.FAILED, JobState.CANCELLED) and now.delivered_at is None:
            folder = self.layout.inputs_dir(job.id)
            self._move_preview(job, folder, preview_name(folder))
        try:
            self._remove(job.name)
        except OSError as exc:
            logger.warning("cannot remove the progress files of {}: {}", job.name, exc)

    def _move_preview(self, job: Job, folder: Path, name: str) -> None:
        webp = self.layout.progress_webp(job.name)
        try:
            if folder.is_dir() and webp.is_file():
                os.replace(webp, folder / name)
        except OSError as exc:
            logger.warning("cannot move the live preview of {}: {}", job.name, exc)

    def sweep(self, journal: Journal) -> None:
        """At start: what belongs to no running job (left by a crash) goes."""
        if not self.layout.progress.is_dir():
            return
        # Theirs: NAME.json, NAME.webp and their temporary files .NAME.json.*, .NAME.webp.* (atomic_path).
        kept = {f"{j.name}.{ext}" for j in journal.jobs((JobState.RUNNING,)) for ext in ("json", "webp")}
        for path in self.layout.progress.iterdir():
            if path.name == ".gitkeep" or not path.is_file():
                continue
            if path.name not in kept and not any(path.name.startswith(f".{k}.") for k in kept):
                path.unlink(missing_ok=True)

    def _remove(self, name: str) -> None:
        for path in (self.layout.progress_json(name), self.layout.progress_webp(name)):
            path.unlink(missing_ok=True)
        temporary = (f".{name}.json.", f".{name}.webp.")  # a worker killed while writing
        for path in self.layout.progress.iterdir():
            if path.name.startswith(temporary):
                path.unlink(missing_ok=True)

    def _write(self, path: Path, document: dict[str, Any]) -> None:
        try:
            write_json_atomic(path, document)
            self.warned = False
        except OSError as exc:  # a full disk or a gone share: progress is a courtesy, jobs go on
            if not self.warned:
                logger.warning("cannot write {}: {}", path, exc)
            self.warned = True
