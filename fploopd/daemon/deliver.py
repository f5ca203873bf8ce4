"""Delivery: a finished job's inputs into ``archive/<name>/``, then its outputs into
``outbox/<name>/`` (last, so that a job in outbox/ is a finished one: its inputs are in archive/ by
then); a failed or cancelled job's inputs, untouched, into ``failed/<name>/`` with ``error.json``.

A *plan* (``DeliveryPlan``: the moves, and the error file to write first) is stored in the journal with the state
transition it follows; ``settle`` carries it out. Each step is a whole-folder rename that is done or
not (``move_once``), so settling again after a crash finishes the delivery exactly once. Nothing is
ever deleted except the job's own checkpoints once its outputs are delivered.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loguru import logger

from fploopd.daemon.crash import crashpoint
from fploopd.daemon.files import input_record, move_once
from fploopd.daemon.journal import Job, JobState, Journal
from fploopd.daemon.layout import Layout
from fploopd.daemon.plan import DeliveryPlan, ErrorFile, Move
from fploopd.errors import ErrorRecord
from fploopd.fsutil import adopt_owner, fsync_dir, write_json_atomic
from fploopd.pipelines.manifest import build_manifest, write_manifest

ERROR_FILE = "error.json"
# A failed job's last live preview, beside its inputs (fploopd.daemon.progressfiles puts it there).
PREVIEW_FILE = "preview.webp"
PREVIEW_FALLBACK = "fploopd-preview.webp"  # when a user's own file is called preview.webp


def _free(folder: Path, name: str, job_id: str) -> Path:
    """``folder/name``, or ``folder/name-<id>`` when a user made ``name`` since the claim."""
    return folder / name if not os.path.lexists(folder / name) else folder / f"{name}-{job_id}"


def plan_rejected(layout: Layout, job_id: str, name: str, error: ErrorRecord) -> DeliveryPlan:
    """Failed or cancelled: error.json into the inputs, then the inputs folder to failed/<name>/."""
    inputs = layout.inputs_dir(job_id)
    # A user file called error.json (a sidecar named "error") is never overwritten.
    error_name = ERROR_FILE if not os.path.lexists(inputs / ERROR_FILE) else "fploopd-error.json"
    return DeliveryPlan(
        write=ErrorFile(path=layout.rel(inputs / error_name), job=job_id, error=error),
        moves=(Move(layout.rel(inputs), layout.rel(_free(layout.failed, name, job_id))),),
        cleanup=False,  # checkpoints stay: `fploopd retry` resumes from them
    )


def plan_done(layout: Layout, job_id: str, name: str) -> DeliveryPlan:
    return DeliveryPlan(
        moves=(
            Move(layout.rel(layout.inputs_dir(job_id)), layout.rel(_free(layout.archive, name, job_id))),
            Move(layout.rel(layout.out_dir(job_id)), layout.rel(_free(layout.outbox, name, job_id))),
        ),
        cleanup=True,
    )


def plan_retry(layout: Layout, job: Job) -> DeliveryPlan:
    """Back from failed/ into the work dir; the old error.json is kept in the work dir."""
    assert job.delivery is not None and job.delivery.write is not None
    inputs = layout.inputs_dir(job.id)
    where = layout.abs(job.delivery.delivered_to("failed") or job.delivery.moves[0].dst)
    error_name = Path(job.delivery.write.path).name
    stamp = time.strftime("%Y%m%dT%H%M%S")
    keep = layout.job_dir(job.id) / "errors" / f"{stamp}-{error_name}"
    # The last try's live preview (progressfiles) goes with the old error, not among the inputs.
    users = {i["name"] for i in job.inputs}
    previews = [n for n in (PREVIEW_FILE, PREVIEW_FALLBACK) if n not in users and os.path.isfile(where / n)]
    return DeliveryPlan(
        moves=(
            Move(layout.rel(where), layout.rel(inputs)),
            Move(layout.rel(inputs / error_name), layout.rel(keep)),
            *(Move(layout.rel(inputs / n), layout.rel(keep.with_name(f"{stamp}-{n}"))) for n in previews),
        ),
        cleanup=False,
        rehash=True,  # the user may have fixed the files in failed/: record what will be used
    )


def settle(job: Job, layout: Layout, journal: Journal, tick: Callable[[], None] | None = None) -> None:
    """Carry out ``job.delivery`` (idempotent), then record that it is done. With several hosts,
    one at a time under the job's delivery lock; a host that finds it held leaves it to the holder."""
    with journal.delivery_lock(job.id) as mine:
        if not mine:
            return
        if journal.multi_host:
            job = journal.get(job.id)  # another host may have finished it since it was read
        _settle(job, layout, journal, tick)


def _settle(job: Job, layout: Layout, journal: Journal, tick: Callable[[], None] | None = None) -> None:
    plan = job.delivery
    if plan is None or job.delivered_at is not None:
        return
    with logger.contextualize(job=job.id):
        if plan.write is not None:
            target = layout.abs(plan.write.path)
            if target.parent.is_dir():  # else its folder has moved on already, with it inside
                write_json_atomic(target, plan.write.document())
        outcomes = []
        for i, move in enumerate(plan.moves):
            src, dst = layout.abs(move.src), layout.abs(move.dst)
            outcome = move_once(src, dst)
            if outcome == "conflict":
                # Someone made dst since the plan was made: pick a free name, record it, go on.
                dst = dst.with_name(f"{dst.name}-{job.id}-{int(time.time())}")
                plan = plan.with_dst(i, layout.rel(dst))
                move = plan.moves[i]
                journal.set_delivery(job.id, plan)
                outcome = move_once(src, dst)
            if outcome == "missing":
                logger.error("cannot deliver {}: neither it nor {} exists", move.src, move.dst)
            outcomes.append(f"{move.src} -> {move.dst}: {outcome}")
            crashpoint(f"deliver:after_move{i + 1}")
        _adopt_owner(layout, plan)
        if plan.cleanup:
            remove_checkpoints(layout, job.id)
        inputs = rehash(layout, job, tick) if plan.rehash else None
        journal.mark_delivered(job.id, outcomes, inputs=inputs)
        if job.state is JobState.DONE:
            logger.info("delivered {} to {}", job.name, plan.delivered_to("outbox"))
        elif job.state in (JobState.FAILED, JobState.CANCELLED):
            logger.info("{} job {}: its files are in {}", job.state, job.name, plan.moves[0].dst)


def _adopt_owner(layout: Layout, plan: DeliveryPlan) -> None:
    """What the daemon made takes the root's owner: outputs whole; of the inputs' folders only the
    folder and error.json, since the files in them are the users' own."""
    for move in plan.moves:
        where = layout.abs(move.dst)
        if move.top in ("failed", "archive"):
            adopt_owner(where, layout.root, tree=False)
            if plan.write is not None:
                adopt_owner(where / Path(plan.write.path).name, layout.root)
        elif move.top == "outbox":
            adopt_owner(where, layout.root)


def rehash(layout: Layout, job: Job, tick: Callable[[], None] | None = None) -> list[dict[str, Any]]:
    """The job's inputs as they are now in its work dir (after a retry brought them back)."""
    kept = ("field", "name", "source")  # where it came from; size and hash as it is now
    return [
        {**{k: e[k] for k in kept if k in e}, **input_record(layout.inputs_dir(job.id) / e["name"], e["field"], tick)}
        for e in job.inputs
    ]


def remove_checkpoints(layout: Layout, job_id: str) -> None:
    """The job is delivered: its checkpoints are no longer needed. Only the daemon's own files go."""
    job_dir = layout.job_dir(job_id)
    if layout.inputs_dir(job_id).exists() or layout.out_dir(job_id).exists():
        return  # something of the user's is still there: leave everything
    shutil.rmtree(layout.checkpoint_dir(job_id), ignore_errors=True)
    try:
        job_dir.rmdir()
    except OSError:
        pass


def settle_all(layout: Layout, journal: Journal, tick: Callable[[], None] | None = None) -> int:
    """Finish every recorded, unfinished delivery; returns how many."""
    jobs = journal.pending_moves()
    for job in jobs:
        settle(job, layout, journal, tick)
    return len(jobs)


def fsync_tree(folder: Path) -> None:
    """Make every file under ``folder`` and the folder entries durable before the rename that publishes them."""
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(dirpath))


def write_job_manifest(
    out_dir: Path,
    job: Job,
    outputs: list[dict[str, Any]],
    model: dict[str, Any] | str | None,
    timings: dict[str, float],
) -> None:
    """The job's manifest.json, then every file in ``out_dir`` made durable before it is published."""
    manifest = build_manifest(
        job_id=job.id,
        name=job.name,
        pipeline=job.pipeline,
        spec=job.spec or {},
        seeds=job.seeds or [],
        model=model,
        inputs=job.inputs,
        outputs=outputs,
        timings=timings,
        attempts=job.attempts,
        created_at=job.created_at,
        finished_at=time.time(),
    )
    write_manifest(out_dir, manifest)
    fsync_tree(out_dir)
