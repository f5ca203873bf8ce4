"""How a run ends, as journal transitions. Each one commits the new state together with the
delivery plan it implies (docs/design.md §4: written before the files move); ``deliver.settle`` then
moves the files. Used by the supervisor, and by the commands for a queued job."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from loguru import logger

from fploopd.daemon import deliver
from fploopd.daemon.crash import crashpoint
from fploopd.daemon.journal import Job, JobState, Journal
from fploopd.daemon.layout import Layout
from fploopd.daemon.settings import Settings
from fploopd.errors import ErrorRecord

CANCELLED = ErrorRecord("cancelled", "cancelled by the user (fploopd cancel)")


def finished(job: Job, layout: Layout, journal: Journal, result: dict[str, Any], model: Any) -> None:
    """running -> done, once the outputs and their manifest are complete and fsynced."""
    out_dir = layout.out_dir(job.id)
    for stale in out_dir.glob(".*.part*"):  # our own temporary files from an interrupted attempt
        stale.unlink(missing_ok=True)
    timings = dict(result.get("timings") or {})
    if job.started_at is not None:
        timings["queued_s"] = round(job.started_at - job.created_at, 3)
    deliver.write_job_manifest(out_dir, job, result["outputs"], model, timings)
    crashpoint("deliver:before_journal")
    journal.transition(
        job.id,
        JobState.DONE,
        expect=JobState.RUNNING,
        fence=_fence(job, journal),
        outputs=result["outputs"],
        error=None,  # an earlier attempt's error stays in the events, not on a done job
        progress={"phase": "done"},
        worker=None,
        delivery=deliver.plan_done(layout, job.id, job.name),
    )
    crashpoint("deliver:after_journal")


def failed(job: Job, layout: Layout, journal: Journal, error: ErrorRecord) -> None:
    """running -> failed, a try that failed for good: the inputs go to failed/<name>/ with error.json."""
    plan = deliver.plan_rejected(layout, job.id, job.name, error)
    journal.transition(
        job.id, JobState.FAILED, expect=JobState.RUNNING, fence=_fence(job, journal), delivery=plan, error=error, worker=None,
        attempts=job.attempts + 1, failures=job.failures + 1,
    )


def stopped(job: Job, layout: Layout, journal: Journal) -> None:
    """The run stopped at a step boundary: cancelled when asked, else queued again (a warm stop,
    an interrupted try that costs nothing of the job's budget)."""
    if journal.get(job.id).cancel_requested:
        logger.info("{} cancelled", job.name)
        plan = deliver.plan_rejected(layout, job.id, job.name, CANCELLED)
        journal.transition(
            job.id, JobState.CANCELLED, expect=JobState.RUNNING, fence=_fence(job, journal), error=CANCELLED, worker=None, delivery=plan
        )
    else:
        logger.info("{} stopped at a step boundary; it stays queued and resumes from its checkpoint", job.name)
        journal.transition(
            job.id, JobState.QUEUED, expect=JobState.RUNNING, fence=_fence(job, journal), worker=None, next_attempt_at=0.0,
            attempts=job.attempts + 1,
        )


def interrupted(job: Job, layout: Layout, journal: Journal, why: str) -> None:
    """The daemon itself stopped or crashed while the job ran: queued again at once, resuming from
    its checkpoint. Counted in ``attempts`` but never in ``failures``, so restarts cannot exhaust it."""
    if journal.get(job.id).cancel_requested:
        stopped(job, layout, journal)
        return
    journal.transition(
        job.id, JobState.QUEUED, expect=JobState.RUNNING, fence=_fence(job, journal), worker=None, next_attempt_at=0.0,
        attempts=job.attempts + 1, error=ErrorRecord("interrupted", why),
    )


def not_started(job: Job, journal: Journal) -> None:
    """Handed to a worker that went away before it took the job: it never ran, so nothing is counted."""
    journal.transition(job.id, JobState.QUEUED, expect=JobState.RUNNING, fence=_fence(job, journal), worker=None, next_attempt_at=0.0)


def retry_or_fail(
    job: Job, layout: Layout, journal: Journal, settings: Settings, error: ErrorRecord, backoff: bool = True
) -> None:
    """A failure that is not the input's fault: queued again after a backoff, until ``failures``
    reaches max_attempts."""
    if journal.get(job.id).cancel_requested:
        stopped(job, layout, journal)
        return
    attempts, failures = job.attempts + 1, job.failures + 1
    if failures >= settings.max_attempts:
        error = dataclasses.replace(error, error=f"{error.error} (failed {failures} of {settings.max_attempts} times; giving up)")
        logger.error("{} failed: {}", job.name, error.error)
        failed(job, layout, journal, error)
        return
    delay = settings.backoff_s(failures) if backoff else 0.0
    logger.warning("{}: {}; try {} of {} in {:.0f} s", job.name, error.error, failures + 1, settings.max_attempts, delay)
    journal.transition(
        job.id, JobState.QUEUED, expect=JobState.RUNNING, fence=_fence(job, journal), attempts=attempts, failures=failures,
        error=error, worker=None, next_attempt_at=time.time() + delay,
    )


def _fence(job: Job, journal: Journal) -> int | None:
    """With several hosts, a run's outcome counts only while its lease holds (LeaseLost otherwise)."""
    return job.fence if journal.multi_host and job.state is JobState.RUNNING else None


def cancel_queued(job: Job, layout: Layout, journal: Journal) -> Job:
    """queued -> cancelled, its inputs planned for failed/<name>/ (settled by whoever holds the root)."""
    plan = deliver.plan_rejected(layout, job.id, job.name, CANCELLED)
    return journal.transition(job.id, JobState.CANCELLED, expect=JobState.QUEUED, error=CANCELLED, delivery=plan)
