"""What the commands do to jobs: look at them, retry, cancel. The running daemon (if any) notices
through the journal; when no daemon holds the root, the command finishes the file moves itself.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fploopd.daemon import deliver
from fploopd.daemon.hookstore import runs_by_job, runs_of
from fploopd.daemon.journal import TERMINAL, IllegalTransition, Job, JobState, Journal
from fploopd.daemon.layout import Layout
from fploopd.daemon.outcomes import cancel_queued
from fploopd.daemon.service import RootLock
from fploopd.daemon.stores import is_postgres, journal_url, open_store
from fploopd.errors import FploopdError
from fploopd.pipelines.manifest import iso_time


class JobError(FploopdError):
    kind = "usage"


def open_journal(layout: Layout, who: str = "cli", *, readonly: bool = False, url: str | None = None) -> Journal | None:
    """The root's journal, or None when it has none yet (nothing was ever dropped). ``readonly``
    (for looking: status) writes nothing, so it works on a full disk. ``url``: the journal to open
    (default: the one the root's settings name, ``stores.journal_url``; a PostgreSQL journal is
    shared by several hosts)."""
    if url is None:
        url = journal_url(layout.root)
    if is_postgres(url):
        return open_store(layout, url, who, readonly=readonly)
    if not layout.journal.exists():
        return None
    return Journal.open_readonly(layout.journal, who) if readonly else Journal(layout.journal, who)


def find(journal: Journal | None, key: str) -> Job:
    try:
        if journal is None:
            raise KeyError(key)
        return journal.get(key)
    except KeyError:
        raise JobError(f"no job {key!r} (see `fploopd status`)") from None


def where(job: Job, layout: Layout) -> dict[str, str | None]:
    """Where the job's files are now: inputs, and outputs for a done job."""
    if job.delivery is None or job.state in (JobState.QUEUED, JobState.RUNNING):
        return {"inputs": str(layout.inputs_dir(job.id)), "outputs": None}
    if job.state is JobState.DONE:
        inputs, outputs = job.delivery.delivered_to("archive"), job.delivery.delivered_to("outbox")
        return {"inputs": str(layout.abs(inputs)) if inputs else None, "outputs": str(layout.abs(outputs)) if outputs else None}
    return {"inputs": str(layout.abs(job.delivery.moves[0].dst)), "outputs": None}


def job_view(job: Job, layout: Layout, hooks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One object of ``fploopd status --json``: plain JSON values only (its shape is a contract).
    ``hooks``: the job's delivery hook runs (``hookstore.HookRun.view``)."""
    places = where(job, layout)
    outputs = []
    if job.state is JobState.DONE and places["outputs"] is not None:
        outputs = [{**o, "path": str(Path(places["outputs"]) / o["file"])} for o in job.outputs or []]
    return {
        "id": job.id,
        "name": job.name,
        "pipeline": job.pipeline,
        "state": job.state.value,
        "attempts": job.attempts,
        "failures": job.failures,
        "progress": job.progress,
        "error": job.error.to_json() if job.error is not None else None,
        "outputs": outputs,
        "priority": job.priority,
        "seeds": job.seeds,
        "inputs": [{k: i.get(k) for k in ("field", "name", "size", "sha256")} for i in job.inputs],
        "location": places,
        "delivered": job.delivered_at is not None or job.delivery is None,
        "cancel_requested": job.cancel_requested,
        "worker": job.worker,
        "next_attempt_at": iso_time(job.next_attempt_at) if job.state is JobState.QUEUED and job.next_attempt_at > time.time() else None,
        "created_at": iso_time(job.created_at),
        "updated_at": iso_time(job.updated_at),
        "started_at": iso_time(job.started_at),
        "finished_at": iso_time(job.finished_at),
        "hooks": hooks or [],
    }


def job_status(journal: Journal, job: Job, layout: Layout) -> dict[str, Any]:
    """A job as ``fploopd status --json`` shows it: ``job_view`` with its delivery hook runs."""
    return job_view(job, layout, [r.view() for r in runs_of(journal, job.id)])


def status_views(journal: Journal | None, layout: Layout) -> list[dict[str, Any]]:
    """``fploopd status --json``: every job, then the drops waiting in the inbox."""
    if journal is None:
        return waiting_views(journal)
    hooks = runs_by_job(journal)  # one query, not one a job: status.json and /api/jobs ask every few seconds
    views = [job_view(j, layout, [r.view() for r in hooks.get(j.id, [])]) for j in journal.jobs()]
    return views + waiting_views(journal)


# Bounds of a job's priority: the sidecar's ``priority`` field's.
PRIORITY_BOUND = 100


def set_priority(journal: Journal, key: str, priority: int) -> Job:
    """A queued job's priority (higher runs first)."""
    job = find(journal, key)
    if not -PRIORITY_BOUND <= priority <= PRIORITY_BOUND:
        raise JobError(f"priority {priority} is out of range ({-PRIORITY_BOUND} to {PRIORITY_BOUND})")
    if job.state is not JobState.QUEUED:
        raise JobError(f"job {job.name} is {job.state}; only a queued job's priority can change")
    return journal.set_priority(job.id, priority)


def settle_if_no_daemon(layout: Layout, journal: Journal) -> bool:
    """Carry out pending file moves now when no daemon holds the root; True when done here."""
    if journal.multi_host:  # several hosts: each delivery under its own lock, whoever holds the root
        deliver.settle_all(layout, journal)
        return True
    lock = RootLock(layout.lock)
    if not lock.acquire():
        return False
    try:
        deliver.settle_all(layout, journal)
    finally:
        lock.release()
    return True


def retry(journal: Journal, layout: Layout, key: str) -> Job:
    """A failed or cancelled job queued again: its files come back from failed/, it resumes from its
    last checkpoint, and it gets a fresh budget of max_attempts (``attempts`` keeps counting)."""
    job = find(journal, key)
    if job.state not in (JobState.FAILED, JobState.CANCELLED):
        raise JobError(f"job {job.name} is {job.state}; only a failed or cancelled job can be retried")
    if job.spec is None:
        place = where(job, layout)["inputs"]
        raise JobError(f"job {job.name} never had a valid sidecar: fix it in {place} and drop the files into the inbox again")
    if job.delivery is None or job.delivered_at is None:
        raise JobError(f"job {job.name} is still being moved to failed/; try again in a moment")
    return journal.transition(
        job.id,
        JobState.QUEUED,
        expect=(JobState.FAILED, JobState.CANCELLED),
        failures=0,
        cancel_requested=0,
        error=None,
        next_attempt_at=0.0,
        delivery=deliver.plan_retry(layout, job),
    )


def cancel(journal: Journal, layout: Layout, key: str) -> Job:
    """Queued: cancelled now (inputs go to failed/<name>/). Running: flagged; stops at the next step."""
    job = find(journal, key)
    if job.state in TERMINAL:
        raise JobError(f"job {job.name} is already {job.state}")
    if job.state is JobState.QUEUED:
        try:
            return cancel_queued(job, layout, journal)
        except IllegalTransition:
            pass  # it started running just now: flag it
    return journal.request_cancel(job.id)


# The supervisor writes its heartbeat into the journal every few seconds; older than this, it is gone.
DAEMON_GONE_AFTER_S = 30.0


def daemon_view(journal: Journal | None) -> dict[str, Any] | None:
    """The running daemon's own state (pid, paused, workers), or None when no daemon is running."""
    state = journal.daemon_state() if journal is not None else {}
    hosts = {k.split("@", 1)[1]: v for k, v in state.items() if k.startswith("supervisor@")}
    if hosts:  # several hosts: each publishes its own
        alive = {
            h: {**v, "workers": state.get(f"workers@{h}") or {}}
            for h, v in sorted(hosts.items())
            if not v.get("stopped") and time.time() - v.get("beat_at", 0) <= DAEMON_GONE_AFTER_S
        }
        return {**next(iter(alive.values())), "hosts": alive} if alive else None
    supervisor = state.get("supervisor")
    if not supervisor or supervisor.get("stopped") or time.time() - supervisor.get("beat_at", 0) > DAEMON_GONE_AFTER_S:
        return None
    return {**supervisor, "workers": state.get("workers") or {}}


def waiting_views(journal: Journal | None) -> list[dict[str, Any]]:
    """Drops the daemon sees in the inbox but has not claimed, as ``status --json`` objects."""
    if daemon_view(journal) is None:
        return []  # nobody is watching the inbox: what was recorded is stale
    assert journal is not None
    return [
        {
            "id": None,
            "name": d["name"],
            "pipeline": d.get("pipeline"),
            "state": "waiting",
            "attempts": 0,
            "progress": None,
            "error": None,
            "outputs": [],
            "waiting_for": d["reason"],
            "sidecar": d["sidecar"],
            "since": iso_time(d.get("since")),
        }
        for d in journal.waiting()
    ]
