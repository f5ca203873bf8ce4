"""Delivery: a finished job's outputs into ``outbox/<name>/``, its inputs into ``archive/<name>/``; a
failed or cancelled job's inputs, untouched, into ``failed/<name>/`` with ``error.json``.

A *plan* (the moves, and the error file to write first) is stored in the journal with the state
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

from fploopd import __version__
from fploopd.daemon.crash import crashpoint
from fploopd.daemon.files import move_once
from fploopd.daemon.journal import Job, Journal
from fploopd.daemon.layout import Layout
from fploopd.fsutil import fsync_dir, write_json_atomic

ERROR_FILE = "error.json"
MANIFEST_FILE = "manifest.json"


def _free(folder: Path, name: str, job_id: str) -> Path:
    """``folder/name``, or ``folder/name-<id>`` when a user made ``name`` since the claim."""
    return folder / name if not os.path.lexists(folder / name) else folder / f"{name}-{job_id}"


def error_document(job_id: str, error: dict[str, Any]) -> dict[str, Any]:
    """``error.json``: exactly job, kind, error, and field and file when known."""
    doc = {"job": job_id, "kind": error.get("kind", "error"), "error": error.get("error", "")}
    doc.update({k: error[k] for k in ("field", "file") if error.get(k) is not None})
    return doc


def plan_rejected(layout: Layout, job_id: str, name: str, error: dict[str, Any]) -> dict[str, Any]:
    """Failed or cancelled: error.json into the inputs, then the inputs folder to failed/<name>/."""
    inputs = layout.inputs_dir(job_id)
    # A user file called error.json (a sidecar named "error") is never overwritten.
    error_name = ERROR_FILE if not os.path.lexists(inputs / ERROR_FILE) else "fploopd-error.json"
    return {
        "write": {"path": layout.rel(inputs / error_name), "json": error_document(job_id, error)},
        "moves": [{"src": layout.rel(inputs), "dst": layout.rel(_free(layout.failed, name, job_id))}],
        "cleanup": False,  # checkpoints stay: `fploopd retry` resumes from them
    }


def plan_done(layout: Layout, job_id: str, name: str) -> dict[str, Any]:
    return {
        "moves": [
            {"src": layout.rel(layout.out_dir(job_id)), "dst": layout.rel(_free(layout.outbox, name, job_id))},
            {"src": layout.rel(layout.inputs_dir(job_id)), "dst": layout.rel(_free(layout.archive, name, job_id))},
        ],
        "cleanup": True,
    }


def plan_retry(layout: Layout, job: Job) -> dict[str, Any]:
    """Back from failed/ into the work dir; the old error.json is kept in the work dir."""
    assert job.delivery is not None
    inputs = layout.inputs_dir(job.id)
    where = layout.abs(job.delivery["moves"][0]["dst"])
    error_name = Path(job.delivery["write"]["path"]).name
    keep = layout.job_dir(job.id) / "errors" / f"{time.strftime('%Y%m%dT%H%M%S')}-{error_name}"
    return {
        "moves": [
            {"src": layout.rel(where), "dst": layout.rel(inputs)},
            {"src": layout.rel(inputs / error_name), "dst": layout.rel(keep)},
        ],
        "cleanup": False,
    }


def settle(job: Job, layout: Layout, journal: Journal, tick: Callable[[], None] | None = None) -> None:
    """Carry out ``job.delivery`` (idempotent), then record that it is done."""
    plan = job.delivery
    if plan is None or job.delivered_at is not None:
        return
    with logger.contextualize(job=job.id):
        write = plan.get("write")
        if write is not None:
            target = layout.abs(write["path"])
            if target.parent.is_dir():  # else its folder has moved on already, with it inside
                write_json_atomic(target, write["json"])
        outcomes = []
        for i, move in enumerate(plan["moves"]):
            src, dst = layout.abs(move["src"]), layout.abs(move["dst"])
            outcome = move_once(src, dst)
            if outcome == "conflict":
                # Someone made dst since the plan was made: pick a free name, record it, go on.
                dst = dst.with_name(f"{dst.name}-{job.id}-{int(time.time())}")
                plan["moves"][i]["dst"] = layout.rel(dst)
                journal.set_delivery(job.id, plan)
                outcome = move_once(src, dst)
            if outcome == "missing":
                logger.error("cannot deliver {}: neither it nor {} exists", move["src"], move["dst"])
            outcomes.append(f"{move['src']} -> {move['dst']}: {outcome}")
            crashpoint(f"deliver:after_move{i + 1}")
        if plan.get("cleanup"):
            _remove_checkpoints(layout, job.id)
        journal.mark_delivered(job.id, outcomes)
        if job.state == "done":
            logger.info("delivered {} to {}", job.name, plan["moves"][0]["dst"])
        elif job.state in ("failed", "cancelled"):
            logger.info("{} job {}: its files are in {}", job.state, job.name, plan["moves"][0]["dst"])


def _remove_checkpoints(layout: Layout, job_id: str) -> None:
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


def write_manifest(
    out_dir: Path,
    job: Job,
    outputs: list[dict[str, Any]],
    model: dict[str, Any] | str | None,
    timings: dict[str, float],
) -> None:
    manifest = {
        "job": job.id,
        "name": job.name,
        "pipeline": job.pipeline,
        "spec": job.spec,
        "seeds": job.seeds,
        "model": model,
        "inputs": [{k: i.get(k) for k in ("name", "field", "size", "sha256")} for i in job.inputs],
        "outputs": outputs,
        "timings": timings,
        "attempts": job.attempts,
        "created_at": _iso(job.created_at),
        "finished_at": _iso(time.time()),
        "fploopd": __version__,
    }
    write_json_atomic(out_dir / MANIFEST_FILE, manifest)
    fsync_tree(out_dir)


def _iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

