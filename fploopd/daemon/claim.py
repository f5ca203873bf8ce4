"""Claiming a drop: its files leave the inbox by rename into ``.fploopd/work/<id>/inputs/``.

Crash safety (docs/design.md §4): the claim is recorded in the journal's ``claims`` table (job id,
name, spec or error, and every move) BEFORE the first rename; the job row is inserted and the
claim row deleted in one transaction AFTER the last. ``complete_claim`` redoes the moves
idempotently, so it serves both the normal path and recovery at start: a crash at any point leaves
each file either still in the inbox or in the work dir, and the recorded claim finishes it.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger

from fploopd.daemon import deliver
from fploopd.daemon.crash import crashpoint
from fploopd.daemon.files import input_record, move_once
from fploopd.daemon.journal import ClaimTaken, Job, Journal, NameTaken
from fploopd.daemon.layout import LATEST_FOLDER, Layout
from fploopd.daemon.names import display, job_name_for
from fploopd.errors import ErrorRecord, FploopdError, InputError
from fploopd.pipelines.seeds import pick_seeds
from fploopd.spec import MEDIA_FIELD_NAMES, JobSpec

MAX_NAME_SUFFIX = 100_000
NAME_TRIES = 20


@dataclass(frozen=True)
class Drop:
    """A sidecar ready to claim: valid (``spec``, ``media``) or rejected (``error``, ``extra``)."""

    sidecar: Path
    spec: JobSpec | None = None
    media: dict[str, Path] | None = None
    error: InputError | None = None
    extra: tuple[Path, ...] = ()
    pipeline: str | None = None  # the inbox subfolder's, for a rejected drop


def new_job_id() -> str:
    return secrets.token_hex(5)


def unique_name(stem: str, layout: Layout, journal: Journal) -> str:
    """``stem``, else ``stem-2``, ``stem-3``...: free in outbox/, failed/, archive/ and the journal."""
    for n in range(1, MAX_NAME_SUFFIX):
        name = stem if n == 1 else f"{stem}-{n}"
        if journal.name_taken(name) or name.casefold() == LATEST_FOLDER:  # outbox/latest/ is the latest slots' folder
            continue
        if any(os.path.lexists(folder / name) for folder in (layout.outbox, layout.failed, layout.archive)):
            continue
        return name
    raise FploopdError(f"no free job name for {stem!r}")


class ClaimUndone(OSError):
    """The claim could not start (its first move failed) and was undone: the drop is still in the
    inbox as it was, and no journal row or work folder is left. ``reason`` says why, for users."""

    def __init__(self, errno_: int | None, reason: str) -> None:
        if errno_ is None:
            super().__init__(reason)
        else:
            super().__init__(errno_, reason)
        self.reason = reason


def claim(drop: Drop, layout: Layout, journal: Journal, tick: Callable[[], None] | None = None) -> Job:
    """Record the claim, move the drop's files into the work dir, then create the job.

    Raises ``ClaimUndone`` when the sidecar cannot leave the inbox (permissions, another file
    system, a read-only share): the claim is then undone, not left for recovery to turn into a
    phantom job. A failure after the first move leaves the claim recorded; recovery finishes it.
    """
    job_id = new_job_id()
    record = claim_record(drop, layout, job_id)
    for _ in range(NAME_TRIES):  # several hosts: another claim may take the free name first
        try:
            name = unique_name(job_name_for(drop.sidecar.stem), layout, journal)
        except FploopdError as exc:
            raise ClaimUndone(None, exc.message) from exc
        try:
            journal.open_claim(job_id, name, record)  # raises ClaimTaken: another host claims this drop
            break
        except NameTaken:
            continue
    else:
        raise ClaimUndone(None, f"no free job name for {drop.sidecar.stem!r} after {NAME_TRIES} tries")
    crashpoint("claim:after_journal")
    first_move(record, layout, journal, job_id)
    job = complete_claim(job_id, name, record, layout, journal, tick)
    crashpoint("claim:after_commit")
    return job


def claim_record(drop: Drop, layout: Layout, job_id: str) -> dict[str, Any]:
    """What the journal records before the first move: the moves, the error or the spec and seeds."""
    inputs_dir = layout.inputs_dir(job_id)
    # The sidecar moves first: once it is gone, no scan can see the drop again.
    files: list[tuple[str, Path]] = [("sidecar", drop.sidecar)]
    files += list((drop.media or {}).items())
    files += [("extra", p) for p in drop.extra]
    record: dict[str, Any] = {
        "moves": [{"field": f, "src": layout.rel(p), "dst": layout.rel(inputs_dir / p.name)} for f, p in files],
        "error": drop.error.record().to_json() if drop.error is not None else None,
        "pipeline": drop.spec.pipeline if drop.spec is not None else drop.pipeline,
    }
    if drop.spec is not None:
        record["spec"] = drop.spec.model_dump(mode="json")
        record["seeds"] = pick_seeds(drop.spec)  # decided once, before any work
    return record


def first_move(record: dict[str, Any], layout: Layout, journal: Journal, job_id: str) -> None:
    """Make the work dir and move the sidecar there; undo the claim (and raise ClaimUndone) if that fails."""
    move = record["moves"][0]
    src, dst = layout.abs(move["src"]), layout.abs(move["dst"])
    if journal.multi_host and not os.path.lexists(src) and not os.path.lexists(dst):
        # Another host's claim of this drop ended between our scan and our claim: it is theirs.
        journal.drop_claim(job_id)
        raise ClaimTaken(f"{display(move['src'])} was claimed by another host", file=display(move["src"]))
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        move_once(src, dst)
    except OSError as exc:
        if os.path.lexists(dst) and not os.path.lexists(src):
            raise  # it moved (what failed came after): the claim stands, recovery finishes it
        reason = why_claim_failed(exc, move["src"], layout)
        undo_claim(journal, layout, job_id, reason)
        raise ClaimUndone(exc.errno, reason) from exc


def why_claim_failed(exc: OSError, src: str, layout: Layout) -> str:
    """A move out of the inbox failed: what to fix, in plain words."""
    shown, folder = display(src), display(src.rsplit("/", 1)[0])
    if exc.errno == errno.EXDEV:
        return (
            f"cannot move {shown} into .fploopd/work/: the inbox is on another file system; the inbox "
            f"must be on the same file system as the root's .fploopd/ folder ({layout.state}), since files are moved, never copied"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (
            f"cannot move {shown} out of the inbox: permission denied; the daemon's user ({_user()}) "
            f"needs write permission on {folder}/ and on .fploopd/work/"
        )
    if exc.errno == errno.EROFS:
        return f"cannot move {shown} out of the inbox: {folder}/ is on a read-only file system; the daemon moves dropped files, so it must be writable"
    return f"cannot move {shown} into .fploopd/work/: {exc.strerror or exc}"


def _user() -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(os.geteuid()).pw_name}, uid {os.geteuid()}"
    except (ImportError, KeyError, AttributeError):  # Windows; a uid without a name
        return f"uid {os.geteuid()}" if hasattr(os, "geteuid") else "the service account"


def undo_claim(journal: Journal, layout: Layout, job_id: str, reason: str) -> None:
    """Forget a claim whose files never moved: its row goes, and its work dir if empty (never files)."""
    with journal.transaction() as db:
        db.execute("DELETE FROM claims WHERE job_id = ?", (job_id,))
    journal.event(job_id, "claim undone", {"reason": reason})
    for folder in (layout.inputs_dir(job_id), layout.job_dir(job_id)):
        try:
            folder.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:  # not empty, or not ours to remove: left as it is
            logger.warning("could not remove {} after an undone claim: {}", layout.rel(folder), exc)


def complete_claim(
    job_id: str, name: str, record: dict[str, Any], layout: Layout, journal: Journal, tick: Callable[[], None] | None = None
) -> Job:
    """Do (or finish) the recorded moves, hash the inputs, and turn the claim into a job."""
    inputs: list[dict[str, Any]] = []
    vanished: list[str] = []
    layout.inputs_dir(job_id).mkdir(parents=True, exist_ok=True)
    for i, move in enumerate(record["moves"]):
        src, dst = layout.abs(move["src"]), layout.abs(move["dst"])
        # "conflict": moved before a crash, and a new file of that name was dropped since: it stays.
        outcome = move_once(src, dst)
        if outcome == "missing":
            vanished.append(src.name)
            continue
        if i == 0:
            crashpoint("claim:after_first_move")
        inputs.append({**input_record(dst, move["field"], tick), "source": move["src"]})
    crashpoint("claim:after_moves")
    error = ErrorRecord.from_json(record["error"]) if record.get("error") is not None else None
    if error is None and vanished:
        shown = [display(v) for v in vanished]
        error = InputError(
            f"{', '.join(shown)} disappeared from the inbox while the job was being claimed", file=shown[0]
        ).record()
    spec = record.get("spec")
    media = {m["field"]: m["name"] for m in inputs if m["field"] in MEDIA_FIELD_NAMES}
    if spec is not None:
        spec = {**spec, **media}  # the effective spec names the files it was made from
    job = journal.close_claim(
        job_id,
        name=name,
        pipeline=record.get("pipeline"),
        spec=spec,
        seeds=record.get("seeds"),
        inputs=inputs,
        priority=(spec or {}).get("priority", 0),
        error=error,
        delivery=deliver.plan_rejected(layout, job_id, name, error) if error is not None else None,
    )
    what = display(record["moves"][0]["src"]) if record["moves"] else name
    if error is None:
        logger.info("claimed {} as job {} ({})", what, name, job_id)
    else:
        logger.warning("rejected {} as job {} ({}): {}", what, name, job_id, error.error)
    return job


def recover_claims(layout: Layout, journal: Journal) -> list[Job]:
    """Finish the claims a crash interrupted (start-up): all of them on one host; with several
    hosts, this host's own (others' are finished once their lease runs out: ``finish_stale_claims``)."""
    jobs = []
    for job_id, name, record in journal.open_claims(journal.host if journal.multi_host else None):
        with logger.contextualize(job=job_id):
            logger.warning("finishing the claim of {} interrupted by a crash", name)
            jobs.append(complete_claim(job_id, name, record, layout, journal))
    return jobs


def finish_stale_claims(layout: Layout, journal: Journal) -> list[Job]:
    """Several hosts: finish the claims of a host that died halfway through them."""
    jobs = []
    for job_id, name, record in journal.take_stale_claims():
        with logger.contextualize(job=job_id):
            logger.warning("finishing the claim of {} that another host left halfway", name)
            jobs.append(complete_claim(job_id, name, record, layout, journal))
    return jobs


def adopt_orphans(layout: Layout, journal: Journal) -> list[Job]:
    """Work dirs the journal does not know (a lost or replaced journal): their files go to failed/.

    Nothing is lost: each becomes a failed job whose files (inputs, and any outputs, in ``out/``)
    are delivered to ``failed/<name>/`` with an error.json that explains.
    """
    if not layout.work.is_dir():
        return []
    known = {j.id for j in journal.jobs()} | {c[0] for c in journal.open_claims()}
    jobs = []
    for entry in sorted(layout.work.iterdir()):
        if entry.name in known or not entry.is_dir():
            continue
        if journal.multi_host and journal.known(entry.name):
            continue  # another host's claim made it after the first read
        inputs_dir, out_dir = layout.inputs_dir(entry.name), layout.out_dir(entry.name)
        if not inputs_dir.is_dir() and not out_dir.is_dir():
            continue  # only checkpoints: nothing of the user's
        if out_dir.is_dir():
            move_once(out_dir, inputs_dir / "out")
        files = sorted(p.name for p in inputs_dir.iterdir()) if inputs_dir.is_dir() else []
        sidecars = [f for f in files if f.endswith(".json")]
        name = unique_name(job_name_for(Path(sidecars[0]).stem) if sidecars else entry.name, layout, journal)
        error = FploopdError(
            f"found in .fploopd/work/{entry.name}/ with no journal record (was the journal lost?); "
            "these are the job's files as they were: drop them again to run the job"
        ).record()
        here = [layout.rel(inputs_dir / f) for f in files]
        record = {"moves": [{"field": "orphan", "src": r, "dst": r} for r in here], "error": error.to_json(), "pipeline": None}
        journal.open_claim(entry.name, name, record)
        job = complete_claim(entry.name, name, record, layout, journal)
        logger.error("recovered orphan work dir {} as failed job {}", entry.name, name)
        jobs.append(job)
    return jobs
