"""The latest slot: ``outbox/latest/<channel>.mp4`` (and ``.webp``, ``.gif``, ``.mov`` when asked
for) always holds the newest delivered 1-loop or connect clip of a channel, so a media source, a
browser source or a game engine can point at one path that never changes.

A slot is replaced by a rename: the new clip is hard-linked (or, where links are not possible,
copied and fsynced) beside it under a temporary name, then renamed over it. A reader that opens the
slot gets the old file or the new one, always whole; one that has it open keeps reading the old one.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from loguru import logger

from fploopd.daemon.journal import Job, JobState
from fploopd.daemon.layout import Layout
from fploopd.fsutil import fsync_dir

# The clip kinds a slot shows, and the other kinds of the same clip, with the slot's extension.
CLIP_KINDS = {"1loop": ".mp4", "connect": ".mp4"}
OTHER_KINDS = {"prores": ".mov", "webp": ".webp", "gif": ".gif"}
CLIP_SUFFIXES = ("_1loop", "_connect")


def channel_of(job: Job) -> str | None:
    """The job's channel: its spec's ``channel``, else its pipeline."""
    return (job.spec or {}).get("channel") or job.pipeline


def clip_files(layout: Layout, job: Job) -> dict[str, Path]:
    """The delivered files of a done job's newest 1-loop or connect clip, by slot extension
    (``.mp4`` first); empty when it made none (latents only, a plain i2v video)."""
    if job.state is not JobState.DONE or job.delivery is None:
        return {}
    folder = job.delivery.delivered_to("outbox")
    if folder is None:
        return {}
    found: dict[str, Path] = {}
    for output in job.outputs or []:  # generations in order: a later one replaces an earlier one
        kind, file = output.get("kind"), str(output.get("file") or "")
        ext = CLIP_KINDS.get(kind) or (OTHER_KINDS.get(kind) if Path(file).stem.endswith(CLIP_SUFFIXES) else None)
        if ext is not None:
            found[ext] = layout.abs(folder) / file
    return dict(sorted(found.items(), key=lambda item: item[0] != ".mp4"))


def slot_path(layout: Layout, channel: str, ext: str = ".mp4") -> Path:
    return layout.latest / f"{channel}{ext}"


def update_latest(layout: Layout, job: Job) -> list[Path]:
    """Point the job's channel's slots at its newest clip; returns the slots replaced."""
    channel = channel_of(job)
    if channel is None:
        return []
    replaced = []
    for ext, source in clip_files(layout, job).items():
        if not source.is_file():
            logger.warning("{} is not in the outbox any more; outbox/latest/{}{} keeps the clip it had", source, channel, ext)
            continue
        target = slot_path(layout, channel, ext)
        replace_with(target, source)
        replaced.append(target)
    if replaced:
        logger.info("outbox/latest/{} now shows {}", channel, job.name)
    return replaced


def replace_with(target: Path, source: Path) -> None:
    """Make ``target`` a complete copy (a hard link where possible) of ``source`` in one rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
    try:
        try:
            os.link(source, tmp)
        except OSError:  # a file system without hard links (FAT, some shares): a full copy
            shutil.copyfile(source, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def newest_clip(layout: Layout, jobs: list[Job], channel: str) -> Path | None:
    """The newest delivered clip of ``channel``: the file of the last done job that made one (its own
    file, which no later delivery replaces), else the slot's file, else None."""
    for job in sorted(jobs, key=lambda j: j.delivered_at or 0.0, reverse=True):
        if job.delivered_at is not None and channel_of(job) == channel:
            files = [f for f in clip_files(layout, job).values() if f.is_file()]
            if files:
                return files[0]
    slot = slot_path(layout, channel)
    return slot if slot.is_file() else None
