"""What the commands do to jobs: look at them, retry, cancel. The running daemon (if any) notices
through the journal; when no daemon holds the root, the command finishes the file moves itself.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fploopd.daemon import deliver
from fploopd.daemon.journal import Job, Journal
from fploopd.daemon.layout import Layout
from fploopd.daemon.outcomes import cancel_queued
from fploopd.daemon.service import RootLock
from fploopd.errors import FploopdError


class JobError(FploopdError):
    kind = "usage"


def open_journal(layout: Layout, who: str = "cli") -> Journal | None:
    """The root's journal, or None when it has none yet (nothing was ever dropped)."""
    return Journal(layout.journal, who) if layout.journal.exists() else None


def find(journal: Journal | None, key: str) -> Job:
    try:
        if journal is None:
            raise KeyError(key)
        return journal.get(key)
    except KeyError:
        raise JobError(f"no job {key!r} (see `fploopd status`)") from None


def _iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def where(job: Job, layout: Layout) -> dict[str, str | None]:
    """Where the job's files are now: inputs, and outputs for a done job."""
    if job.delivery is None or job.state in ("queued", "running"):
        return {"inputs": str(layout.inputs_dir(job.id)), "outputs": None}
    moves = job.delivery["moves"]
    if job.state == "done":
        return {"inputs": str(layout.abs(moves[1]["dst"])), "outputs": str(layout.abs(moves[0]["dst"]))}
    return {"inputs": str(layout.abs(moves[0]["dst"])), "outputs": None}


def job_view(job: Job, layout: Layout) -> dict[str, Any]:
    """One object of ``fploopd status --json``."""
    places = where(job, layout)
    outputs = []
    if job.state == "done" and places["outputs"] is not None:
        outputs = [{**o, "path": str(Path(places["outputs"]) / o["file"])} for o in job.outputs or []]
    return {
        "id": job.id,
        "name": job.name,
        "pipeline": job.pipeline,
        "state": job.state,
        "attempts": job.attempts,
        "progress": job.progress,
        "error": job.error,
        "outputs": outputs,
        "priority": job.priority,
        "seeds": job.seeds,
        "inputs": [{k: i.get(k) for k in ("field", "name", "size", "sha256")} for i in job.inputs],
        "location": places,
        "delivered": job.delivered_at is not None or job.delivery is None,
        "cancel_requested": job.cancel_requested,
        "worker": job.worker,
        "next_attempt_at": _iso(job.next_attempt_at) if job.state == "queued" and job.next_attempt_at > time.time() else None,
        "created_at": _iso(job.created_at),
        "updated_at": _iso(job.updated_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
    }


def settle_if_no_daemon(layout: Layout, journal: Journal) -> bool:
    """Carry out pending file moves now when no daemon holds the root; True when done here."""
    lock = RootLock(layout.lock)
    if not lock.acquire():
        return False
    try:
        deliver.settle_all(layout, journal)
    finally:
        lock.release()
    return True


def retry(journal: Journal, layout: Layout, key: str) -> Job:
    job = find(journal, key)
    if job.state != "failed":
        raise JobError(f"job {job.name} is {job.state}; only a failed job can be retried")
    if job.spec is None:
        place = where(job, layout)["inputs"]
        raise JobError(f"job {job.name} never had a valid sidecar: fix it in {place} and drop the files into the inbox again")
    if job.delivery is None or job.delivered_at is None:
        raise JobError(f"job {job.name} is still being moved to failed/; try again in a moment")
    return journal.transition(
        job.id, "queued", expect="failed", attempts=0, error=None, next_attempt_at=0.0, delivery=deliver.plan_retry(layout, job)
    )


def cancel(journal: Journal, layout: Layout, key: str) -> Job:
    """Queued: cancelled now (inputs go to failed/<name>/). Running: flagged; stops at the next step."""
    from fploopd.daemon.journal import IllegalTransition

    job = find(journal, key)
    if job.state in ("done", "failed", "cancelled"):
        raise JobError(f"job {job.name} is already {job.state}")
    if job.state == "queued":
        try:
            return cancel_queued(job, layout, journal)
        except IllegalTransition:
            pass  # it started running just now: flag it
    return journal.request_cancel(job.id)
