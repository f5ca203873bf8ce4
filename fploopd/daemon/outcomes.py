"""How a run ends, as journal transitions. Each one commits the new state together with the
delivery plan it implies (design.md §4: written before the files move); ``deliver.settle`` then
moves the files. Used by the supervisor, and by the commands for a queued job."""

from __future__ import annotations

import time
from typing import Any

from loguru import logger

from fploopd.daemon import deliver
from fploopd.daemon.crash import crashpoint
from fploopd.daemon.journal import Job, Journal
from fploopd.daemon.layout import Layout
from fploopd.daemon.settings import Settings

CANCELLED = {"kind": "cancelled", "error": "cancelled by the user (fploopd cancel)"}


def finished(job: Job, layout: Layout, journal: Journal, result: dict[str, Any], model: Any) -> None:
    """running -> done, once the outputs and their manifest are complete and fsynced."""
    out_dir = layout.out_dir(job.id)
    for stale in out_dir.glob(".*.part*"):  # our own temporary files from an interrupted attempt
        stale.unlink(missing_ok=True)
    timings = dict(result.get("timings") or {})
    if job.started_at is not None:
        timings["queued_s"] = round(job.started_at - job.created_at, 3)
    deliver.write_manifest(out_dir, job, result["outputs"], model, timings)
    crashpoint("deliver:before_journal")
    journal.transition(
        job.id,
        "done",
        expect="running",
        outputs=result["outputs"],
        error=None,  # an earlier attempt's error stays in the events, not on a done job
        worker=None,
        delivery=deliver.plan_done(layout, job.id, job.name),
    )
    crashpoint("deliver:after_journal")


def failed(job: Job, layout: Layout, journal: Journal, error: dict[str, Any], attempts: int | None = None) -> None:
    """running -> failed: the inputs go to failed/<name>/ with error.json."""
    fields: dict[str, Any] = {"error": error, "worker": None}
    if attempts is not None:
        fields["attempts"] = attempts
    plan = deliver.plan_rejected(layout, job.id, job.name, error)
    journal.transition(job.id, "failed", expect="running", delivery=plan, **fields)


def stopped(job: Job, layout: Layout, journal: Journal) -> None:
    """The run stopped at a step boundary: cancelled when asked, else queued again (a warm stop)."""
    if journal.get(job.id).cancel_requested:
        logger.info("{} cancelled", job.name)
        plan = deliver.plan_rejected(layout, job.id, job.name, CANCELLED)
        journal.transition(job.id, "cancelled", expect="running", error=CANCELLED, worker=None, delivery=plan)
    else:
        logger.info("{} stopped at a step boundary; it stays queued and resumes from its checkpoint", job.name)
        journal.transition(job.id, "queued", expect="running", worker=None, next_attempt_at=0.0)


def retry_or_fail(job: Job, layout: Layout, journal: Journal, settings: Settings, error: dict[str, Any], backoff: bool = True) -> None:
    """A failure that is not the input's fault: queued again after a backoff, until max_attempts."""
    if journal.get(job.id).cancel_requested:
        stopped(job, layout, journal)
        return
    attempts = job.attempts + 1
    if attempts >= settings.max_attempts:
        error = {**error, "error": f"{error.get('error')} (attempt {attempts} of {settings.max_attempts}; giving up)"}
        logger.error("{} failed: {}", job.name, error["error"])
        failed(job, layout, journal, error, attempts)
        return
    delay = settings.backoff_s(attempts) if backoff else 0.0
    logger.warning("{}: {}; attempt {} of {} in {:.0f} s", job.name, error.get("error"), attempts + 1, settings.max_attempts, delay)
    journal.transition(job.id, "queued", expect="running", attempts=attempts, error=error, worker=None, next_attempt_at=time.time() + delay)


def cancel_queued(job: Job, layout: Layout, journal: Journal) -> Job:
    """queued -> cancelled, its inputs planned for failed/<name>/ (settled by whoever holds the root)."""
    plan = deliver.plan_rejected(layout, job.id, job.name, CANCELLED)
    return journal.transition(job.id, "cancelled", expect="queued", error=CANCELLED, delivery=plan)
