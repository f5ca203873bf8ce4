"""A lost or damaged journal: notice it before starting, and rebuild what the folders still say.

The folders keep most of a journal's history: every done job left ``outbox/<name>/manifest.json``
(its inputs in ``archive/<name>/``), every failed or cancelled job ``failed/<name>/error.json`` with
its inputs beside it. Jobs still in ``.fploopd/work/`` are left to the daemon's orphan adoption
(``claim.adopt_orphans``), which hands their files back in ``failed/``.
"""

from __future__ import annotations

import calendar
import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from fploopd.daemon.deliver import ERROR_FILE
from fploopd.daemon.files import input_record
from fploopd.daemon.journal import JobState, Journal, JournalError
from fploopd.daemon.layout import LATEST_FOLDER, Layout
from fploopd.daemon.plan import DeliveryPlan, ErrorFile, Move
from fploopd.daemon.service import RootLock, RootLockedError
from fploopd.errors import ErrorRecord
from fploopd.pipelines.manifest import MANIFEST_FILE

# The name the daemon gives error.json when the user's files hold one already (deliver.plan_rejected).
OTHER_ERROR_FILE = "fploopd-error.json"
STAMP = "%Y%m%dT%H%M%SZ"


# --- before the daemon opens the journal ---------------------------------------------------------


def history(layout: Layout) -> list[str]:
    """What in the root shows that it had a journal: work dirs, delivered and failed jobs."""
    found = []
    if layout.work.is_dir() and any(layout.work.iterdir()):
        found.append(f"{layout.rel(layout.work)}/ holds work folders")
    for folder, marks in (
        (layout.outbox, (MANIFEST_FILE,)),
        (layout.failed, (ERROR_FILE, OTHER_ERROR_FILE)),
        (layout.archive, (MANIFEST_FILE, ERROR_FILE)),
    ):
        n = sum(1 for d in _subfolders(folder) if any((d / m).is_file() for m in marks))
        if n:
            found.append(f"{n} job folder(s) in {layout.rel(folder)}/")
    return found


def journal_is_empty(path: Path) -> bool:
    """True when ``path`` is missing, zero bytes, or a database without a jobs table. A file SQLite
    cannot read is not "empty": opening it reports the damage."""
    if not path.exists() or path.stat().st_size == 0:
        return True
    try:
        journal = Journal.open_readonly(path, "check")
    except JournalError:
        return False
    try:
        return "jobs" not in journal.tables
    finally:
        journal.close()


def check_root_journal(layout: Layout) -> None:
    """Refuse to start fresh on a root that had a journal: starting would forget every job and turn
    the queued ones into failures. A fresh root (nothing there yet) passes."""
    if not journal_is_empty(layout.journal):
        return
    signs = history(layout)
    if not signs:
        return
    state = "missing" if not layout.journal.exists() else "empty"
    raise JournalError(
        f"the journal {layout.journal} is {state}, but this root has jobs from before ({'; '.join(signs)}). "
        "Starting now would forget them. Rebuild the journal from the folders with "
        f"`fploopd journal recover --root {layout.root}`, then start the daemon again",
        file=str(layout.journal),
    )


# --- fploopd journal recover ---------------------------------------------------------------------


@dataclass
class Recovery:
    done: int = 0
    failed: int = 0
    cancelled: int = 0
    moved_aside: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # folders that say nothing usable, with why
    work_dirs: int = 0  # left for the daemon's orphan adoption

    def summary(self) -> str:
        lines = [f"{self.done} done, {self.failed} failed, {self.cancelled} cancelled recovered"]
        lines += [f"moved aside (kept): {p}" for p in self.moved_aside]
        lines += [f"skipped {s}" for s in self.skipped]
        if self.work_dirs:
            lines.append(
                f"{self.work_dirs} unfinished job(s) in .fploopd/work/: the next `fploopd run` puts their files "
                "in failed/ with an error.json; drop them again to run them"
            )
        return "\n".join(lines)


def recover_journal(layout: Layout) -> Recovery:
    """Rebuild the journal from outbox/ and failed/, under the root lock (no daemon may run).

    A journal that is damaged, empty or has no jobs table is moved aside first (never deleted); a
    healthy one is kept, and only the jobs it does not know are added.
    """
    lock = RootLock(layout.lock)
    if not lock.acquire():
        raise RootLockedError(
            f"another fploopd daemon (pid {lock.holder()}) is running on {layout.root}: stop it, then run "
            "`fploopd journal recover` again",
            file=str(layout.lock),
        )
    try:
        result = Recovery()
        result.moved_aside = _set_aside_unless_healthy(layout.journal)
        journal = Journal(layout.journal, "recover", check=True)
        try:
            _restore_all(layout, journal, result)
            result.work_dirs = len(_unfinished(layout, {j.id for j in journal.jobs()}))
        finally:
            journal.close()
        return result
    finally:
        lock.release()


def _unfinished(layout: Layout, known: set[str]) -> list[Path]:
    """Work dirs the journal does not know that hold a user's files (what adopt_orphans takes)."""
    return [
        d
        for d in _subfolders(layout.work)
        if d.name not in known and (layout.inputs_dir(d.name).is_dir() or layout.out_dir(d.name).is_dir())
    ]


def _healthy(path: Path) -> bool:
    try:
        journal = Journal.open_readonly(path, "recover")
    except JournalError:
        return False
    try:
        journal.quick_check()
        return "jobs" in journal.tables
    except (JournalError, sqlite3.Error):
        return False
    finally:
        journal.close()


def _set_aside_unless_healthy(path: Path) -> list[str]:
    """Move a journal that cannot be used (and its -wal and -shm, which may hold its last writes)
    to ``journal.sqlite3.broken-<UTC time>``; returns the new paths."""
    if path.exists() and path.stat().st_size > 0 and _healthy(path):
        return []
    aside = path.with_name(f"{path.name}.broken-{time.strftime(STAMP, time.gmtime())}")
    moved = []
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            dst = Path(f"{aside}{suffix}")
            os.rename(src, dst)
            moved.append(str(dst))
            logger.warning("moved the unusable journal file {} aside to {}", src, dst)
    return moved


def _restore_all(layout: Layout, journal: Journal, result: Recovery) -> None:
    known = {j.id for j in journal.jobs()}
    found: list[tuple[float, dict[str, Any]]] = []
    for folder in _subfolders(layout.outbox):
        job = _done_job(layout, folder, result)
        if job is not None:
            found.append((job["created_at"], job))
    for folder in _subfolders(layout.failed):
        job = _failed_job(layout, folder, result)
        if job is not None:
            found.append((job["created_at"], job))
    for _, job in sorted(found, key=lambda pair: pair[0]):
        if job["id"] in known:
            continue  # the journal has it (a healthy journal kept), or two folders name the same job
        job["name"] = _free_name(journal, job["name"], job["id"])
        journal.restore(job, {"from": job["delivery"].moves[0].dst})
        known.add(job["id"])
        state = job["state"].value
        setattr(result, state, getattr(result, state) + 1)


def _done_job(layout: Layout, folder: Path, result: Recovery) -> dict[str, Any] | None:
    manifest = _read_json(folder / MANIFEST_FILE)
    if manifest is None:
        if folder.name != LATEST_FOLDER:  # outbox/latest/ holds each channel's newest loop, no job
            result.skipped.append(f"{layout.rel(folder)}/ (no readable {MANIFEST_FILE})")
        return None
    if not isinstance(manifest.get("job"), str) or not manifest["job"]:
        result.skipped.append(f"{layout.rel(folder)}/ ({MANIFEST_FILE} names no job)")
        return None
    job_id = manifest["job"]
    name = str(manifest.get("name") or folder.name)
    created = _epoch(manifest.get("created_at")) or (folder / MANIFEST_FILE).stat().st_mtime
    finished = _epoch(manifest.get("finished_at")) or (folder / MANIFEST_FILE).stat().st_mtime
    inputs = [i for i in manifest.get("inputs") or [] if isinstance(i, dict)]
    archive = _archive_of(layout, name, job_id, inputs)
    return {
        "id": job_id,
        "name": name,
        "pipeline": manifest.get("pipeline"),
        "spec": manifest.get("spec"),
        "seeds": manifest.get("seeds"),
        "inputs": inputs,
        "state": JobState.DONE,
        "attempts": int(manifest.get("attempts") or 0),
        "outputs": [o for o in manifest.get("outputs") or [] if isinstance(o, dict)],
        "delivery": DeliveryPlan(
            moves=(
                Move(layout.rel(layout.out_dir(job_id)), layout.rel(folder)),
                Move(layout.rel(layout.inputs_dir(job_id)), layout.rel(archive)),
            ),
            cleanup=True,
        ),
        "delivered_at": time.time(),
        "created_at": created,
        "updated_at": finished,
        "finished_at": finished,
    }


def _archive_of(layout: Layout, name: str, job_id: str, inputs: list[dict[str, Any]]) -> Path:
    """The archive folder holding this job's inputs: delivery names it ``name``, ``name-<id>``, or
    ``<that>-<id>-<time>`` after a conflict; the one holding every input file wins."""
    wanted = {str(i.get("name")) for i in inputs if i.get("name")}
    candidates = [layout.archive / f"{name}-{job_id}", layout.archive / name]
    candidates += sorted(p for p in _subfolders(layout.archive) if p.name.startswith((f"{name}-{job_id}-", f"{name}-")))
    for folder in candidates:
        if folder.is_dir() and wanted <= {p.name for p in folder.iterdir()}:
            return folder
    return layout.archive / name


def _failed_job(layout: Layout, folder: Path, result: Recovery) -> dict[str, Any] | None:
    for error_name in (OTHER_ERROR_FILE, ERROR_FILE):  # fploopd-error.json exists only when the user had an error.json
        error = _read_json(folder / error_name)
        if error is not None and isinstance(error.get("job"), str) and error["job"]:
            break
    else:
        result.skipped.append(f"{layout.rel(folder)}/ (no {ERROR_FILE} naming a job)")
        return None
    job_id = error["job"]
    when = (folder / error_name).stat().st_mtime
    name = folder.name[: -len(job_id) - 1] if folder.name.endswith(f"-{job_id}") else folder.name
    files = sorted(p for p in folder.iterdir() if p.name != error_name and not p.is_dir())
    record = ErrorRecord.from_json(error)
    return {
        "id": job_id,
        "name": name or folder.name,
        "pipeline": None,
        "spec": None,
        "seeds": None,
        "inputs": [input_record(p, "sidecar" if p.suffix.lower() == ".json" else "media") for p in files],
        "state": JobState.CANCELLED if record.kind == "cancelled" else JobState.FAILED,
        "attempts": 0,
        "error": record,
        "delivery": DeliveryPlan(
            write=ErrorFile(path=layout.rel(layout.inputs_dir(job_id) / error_name), job=job_id, error=record),
            moves=(Move(layout.rel(layout.inputs_dir(job_id)), layout.rel(folder)),),
            cleanup=False,
        ),
        "delivered_at": time.time(),
        "created_at": when,
        "updated_at": when,
        "finished_at": when,
    }


def _free_name(journal: Journal, name: str, job_id: str) -> str:
    """Names are unique in the journal; a clash (two incarnations of a name) gets the job id."""
    return name if not journal.name_taken(name) else f"{name}-{job_id}"


def _subfolders(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _epoch(text: Any) -> float | None:
    """``2026-01-02T03:04:05Z`` (the manifest's times) as seconds since the epoch."""
    try:
        return float(calendar.timegm(time.strptime(str(text), "%Y-%m-%dT%H:%M:%SZ")))
    except (ValueError, TypeError):
        return None
