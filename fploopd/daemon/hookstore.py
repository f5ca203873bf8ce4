"""The journal's hook tables (schema 3): which deliveries had their follow-ups planned, and each
hook's run of each delivery with its tries. A run is ``pending`` until a try succeeds (``done``) or
the hook's retries are spent (``failed``); a run that was in flight when the daemon died is still
``pending``, so it runs again after a restart (at least once), and a ``done`` run never runs again.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from fploopd.daemon.journal import UNPLANNED_DELIVERIES, Job, JobState, Journal
from fploopd.pipelines.manifest import iso_time


@dataclass(frozen=True)
class HookRun:
    job_id: str
    hook: str
    delivered_at: float
    state: str  # the job's state the run is about: done, failed, cancelled
    key: str  # the idempotency key sent with it
    status: str  # pending, done, failed
    tries: int
    next_at: float
    last: dict[str, Any] | None  # what the last try gave: ok, exit_code or http_status, error, output

    def view(self) -> dict[str, Any]:
        """As ``fploopd status --json`` shows it, under the job's ``hooks``."""
        return {
            "hook": self.hook,
            "for": self.state,
            "status": self.status,
            "tries": self.tries,
            "next_try_at": iso_time(self.next_at) if self.status == "pending" and self.tries else None,
            "last": self.last,
        }


def _run(row: Any) -> HookRun:
    values = dict(row)
    values["last"] = json.loads(values["last"]) if values["last"] else None
    for unused in ("created_at", "updated_at"):
        values.pop(unused)
    return HookRun(**values)


def idempotency_key(job: Job) -> str:
    """The job id for a done job (delivered once). A failed or cancelled job can be retried and end
    again, so its notice's key also says which end: ``<id>:failed:<delivery time in ms>``."""
    assert job.delivered_at is not None
    return job.id if job.state is JobState.DONE else f"{job.id}:{job.state}:{int(job.delivered_at * 1000)}"


def unplanned(journal: Journal) -> list[Job]:
    """Jobs that ended and were delivered, whose follow-ups (latest slot, OBS, hooks) are not planned yet."""
    rows = journal.db.execute(f"SELECT * {UNPLANNED_DELIVERIES} ORDER BY delivered_at").fetchall()
    return [Job.from_row(r) for r in rows]


def plan_round(journal: Journal, job: Job, hooks: list[str]) -> None:
    """Record, in one transaction, that ``job``'s delivery was followed up and which hooks it runs."""
    assert job.delivered_at is not None
    now, key = time.time(), idempotency_key(job)
    with journal.transaction() as db:
        db.execute(
            "INSERT INTO hook_rounds (job_id, delivered_at, state, planned_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (job.id, job.delivered_at, job.state.value, now),
        )
        db.executemany(
            "INSERT INTO hook_runs (job_id, hook, delivered_at, state, key, status, tries, next_at,"
            " created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?) ON CONFLICT DO NOTHING",
            [(job.id, hook, job.delivered_at, job.state.value, key, now, now, now) for hook in hooks],
        )
        if hooks:
            journal._event(job.id, "hooks planned", {"hooks": hooks})


def pending_runs(journal: Journal) -> list[HookRun]:
    """Every run still to do, the soonest due first."""
    rows = journal.db.execute("SELECT * FROM hook_runs WHERE status = 'pending' ORDER BY next_at, job_id, hook").fetchall()
    return [_run(r) for r in rows]


def pending_count(journal: Journal) -> int:
    if "hook_runs" not in journal.tables:
        return 0
    return journal.db.execute("SELECT count(*) FROM hook_runs WHERE status = 'pending'").fetchone()[0]


def record_try(journal: Journal, run: HookRun, last: dict[str, Any], status: str, next_at: float) -> None:
    """One try of ``run`` ended: its outcome, the run's new status, and when the next try is due."""
    with journal.transaction() as db:
        db.execute(
            "UPDATE hook_runs SET status = ?, tries = tries + 1, next_at = ?, last = ?, updated_at = ?"
            " WHERE job_id = ? AND hook = ? AND delivered_at = ? AND status = 'pending'",
            (status, next_at, json.dumps(last), time.time(), run.job_id, run.hook, run.delivered_at),
        )
        journal._event(run.job_id, f"hook {status}" if status != "pending" else "hook try failed", {"hook": run.hook, **last})


def runs_of(journal: Journal | None, job_id: str) -> list[HookRun]:
    """The hook runs of one job, oldest delivery first (none in a journal from before hooks)."""
    return runs_by_job(journal, job_id).get(job_id, [])


def runs_by_job(journal: Journal | None, job_id: str | None = None) -> dict[str, list[HookRun]]:
    """Every job's hook runs (or ``job_id``'s), oldest delivery first: one query for a whole status."""
    if journal is None or "hook_runs" not in journal.tables:
        return {}
    where, args = ("WHERE job_id = ? ", (job_id,)) if job_id is not None else ("", ())
    rows = journal.db.execute(f"SELECT * FROM hook_runs {where}ORDER BY delivered_at, hook", args).fetchall()
    out: dict[str, list[HookRun]] = {}
    for row in rows:
        run = _run(row)
        out.setdefault(run.job_id, []).append(run)
    return out
