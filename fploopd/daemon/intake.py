"""Intake (docs/design.md §3): find sidecars in the inbox, wait until they and their media are stable, and
hand over drops that are ready to claim (or rejected, with the files that go to failed/ with them).

A full scan is the truth; watchdog events only wake the loop early (shares send none, and
watchdog drops events on overflow). Stability is judged across scans: a file is ready when its
size and mtime have not changed for ``settle_s`` and it can be opened for reading.

Whatever a drop holds (any bytes, any name, a FIFO, no permissions), the scan goes on: the drop is
rejected as its own fault (``failed/<name>/error.json``) or waits with a reason; the other drops
are not held up.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from loguru import logger
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from fploopd.daemon.claim import ClaimUndone, Drop, claim
from fploopd.daemon.files import NotRegularFile, is_locked_for_writing, probe_readable
from fploopd.daemon.journal import ClaimTaken, Job, Journal, JournalError
from fploopd.daemon.layout import Layout, is_temporary_name
from fploopd.daemon.loras import locate_loras, lora_folders, shown_folders
from fploopd.daemon.names import display, stem_problem
from fploopd.daemon.profiles import Profiles
from fploopd.daemon.settings import Settings
from fploopd.daemon.sidecar import companions_of_bad_sidecar, effective_spec, locate_media, read_sidecar
from fploopd.errors import InputError
from fploopd.media.limits import human_bytes
from fploopd.spec import JobSpec


class Stability:
    """Remembers each file's (size, mtime) and since when it has not changed."""

    def __init__(self, settle_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.settle_s = settle_s
        self.clock = clock
        self._seen: dict[Path, tuple[tuple[int, int], float]] = {}

    def settled(self, path: Path) -> bool:
        """Unchanged for ``settle_s`` and not held by a writer. Never raises, never blocks.

        A file that stays unchanged but cannot be opened for another reason (permissions) counts as
        settled: waiting would never end, and reading it says why it fails.
        """
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            self._seen.pop(path, None)
            return False
        if not stat.S_ISREG(st.st_mode):
            return False
        key = (st.st_size, st.st_mtime_ns)
        now = self.clock()
        last = self._seen.get(path)
        if last is None or last[0] != key:
            self._seen[path] = (key, now)
            if self.settle_s > 0:
                return False
        elif now - last[1] < self.settle_s:
            return False
        try:
            probe_readable(path)
        except NotRegularFile:
            return False
        except FileNotFoundError:
            self._seen.pop(path, None)
            return False
        except OSError as exc:  # Windows and some shares lock a file that is still being written
            return not is_locked_for_writing(exc)
        return True

    def forget_except(self, keep: set[Path]) -> None:
        for path in set(self._seen) - keep:
            del self._seen[path]


@dataclass(frozen=True)
class Waiting:
    """A drop in the inbox that is not ready yet, for ``fploopd status`` and the log."""

    sidecar: str  # relative to the root, e.g. "inbox/loop/cat.json" (undecodable bytes as \xe9)
    name: str  # the stem
    pipeline: str | None
    reason: str  # e.g. "waiting for image file cat.png (up to 600 s)", "claim failed: ..."
    since: float  # time.time() when first seen waiting
    blocked: bool = False  # only a person can end the wait (a claim that failed): `run --once` need not wait


@dataclass
class ScanResult:
    ready: list[Drop] = field(default_factory=list)
    waiting: list[Waiting] = field(default_factory=list)


@dataclass(frozen=True)
class _Verdict:
    """What one look at a sidecar found: a drop (ready or rejected), a reason to wait, or nothing (gone)."""

    drop: Drop | None = None
    reason: str = ""
    pipeline: str | None = None


@dataclass(frozen=True)
class _ClaimFailure:
    reason: str
    key: tuple[int, int] | None  # the sidecar's (size, mtime) then: a change means try again at once
    at: float  # clock()


_GONE = _Verdict()
CLAIM_RETRY_S = 60.0  # a failed claim is tried again this often (or when its sidecar changes)
MAX_MESSAGE_CHARS = 2000  # an error.json message quotes values; a 60 KB one helps nobody


class Intake:
    def __init__(self, settings: Settings, layout: Layout, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.layout = layout
        self.profiles = Profiles(layout.profiles)
        self.clock = clock
        self.stability = Stability(settings.settle_s, clock)
        self._first_seen: dict[Path, float] = {}  # sidecar -> when it was first seen complete
        self._said: dict[Path, str] = {}  # the last "waiting" message logged per sidecar (or ignored path)
        self._since: dict[Path, float] = {}  # sidecar -> time.time() when first seen waiting
        self._settled: dict[Path, bool] = {}  # this scan's stability verdicts
        self._elsewhere: set[Path] = set()  # files outside the inbox this scan waited on (LoRAs)
        self._claim_failures: dict[Path, _ClaimFailure] = {}
        self._folder_errors: dict[Path, str] = {}  # inbox folders that could not be listed, and why
        self._folders: set[Path] = set()  # folders named *.json, said once
        self._unexpected: dict[Path, str] = {}  # the unforeseen error last logged per sidecar

    # --- scanning ---------------------------------------------------------------------------------

    def scan(self) -> ScanResult:
        """Every sidecar in the inbox: ready (to claim, or rejected), or waiting with a reason.

        Never raises because of one drop: whatever a file does, it becomes that drop's rejection.
        """
        result = ScanResult()
        sidecars: set[Path] = set()
        seen: set[Path] = set()
        self._elsewhere = set()
        for folder, pipeline in self.layout.inbox_folders():
            names = self._list(folder)
            # Every file's clock starts when first seen, so media settle while the sidecar does.
            self._settled = {folder / n: self.stability.settled(folder / n) for n in names if not is_temporary_name(n)}
            seen |= set(self._settled)
            for name in names:
                if is_temporary_name(name) or not name.lower().endswith(".json"):
                    continue
                sidecar = folder / name
                if self._is_folder(sidecar):
                    continue
                sidecars.add(sidecar)
                self._sort(sidecar, pipeline, result)
        for memory in (self._first_seen, self._said, self._since, self._claim_failures, self._unexpected):
            for gone in set(memory) - sidecars:
                del memory[gone]
        self._folders &= seen
        self.stability.forget_except(seen | self._elsewhere)
        return result

    def _list(self, folder: Path) -> list[str]:
        """The folder's names; an unreadable folder is said once (its drops wait until it is readable)."""
        try:
            names = sorted(os.listdir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            why = f"cannot list {self.layout.rel(folder)}/: {exc.strerror or exc}; its drops wait until it can be read"
            if self._folder_errors.get(folder) != why:
                self._folder_errors[folder] = why
                logger.error("{}", why)
            return []
        self._folder_errors.pop(folder, None)
        return names

    def _is_folder(self, path: Path) -> bool:
        """A folder named *.json is nobody's sidecar: left alone, said once."""
        try:
            is_dir = stat.S_ISDIR(os.lstat(path).st_mode)
        except OSError:
            return False
        if is_dir and path not in self._folders:
            self._folders.add(path)
            logger.info("{}: a folder, not a sidecar; left alone", display(self.layout.rel(path)))
        return is_dir

    def _sort(self, sidecar: Path, pipeline: str | None, result: ScanResult) -> None:
        """Put one sidecar among the ready or the waiting (or nowhere, when it is gone)."""
        verdict = self._examine_safely(sidecar, pipeline)
        if verdict.drop is not None:
            failure = self._claim_failures.get(sidecar)
            if failure is None or self._claim_due(sidecar, failure):
                result.ready.append(verdict.drop)
                for memory in (self._first_seen, self._said, self._since):
                    memory.pop(sidecar, None)
                return
            verdict = _Verdict(reason=f"claim failed: {failure.reason}", pipeline=verdict.pipeline)
        if not verdict.reason:
            return
        result.waiting.append(self._waiting(sidecar, verdict, blocked=sidecar in self._claim_failures))
        if self._said.get(sidecar) != verdict.reason:
            self._said[sidecar] = verdict.reason
            if not verdict.reason.startswith("claim failed"):  # Intake.claim said that one already
                level = "DEBUG" if verdict.reason.endswith("settle") else "INFO"
                logger.log(level, "{}: {}", display(self.layout.rel(sidecar)), verdict.reason)

    def _waiting(self, sidecar: Path, verdict: _Verdict, blocked: bool) -> Waiting:
        return Waiting(
            sidecar=display(self.layout.rel(sidecar)),
            name=display(sidecar.stem),
            pipeline=verdict.pipeline,
            reason=verdict.reason,
            since=self._since.setdefault(sidecar, time.time()),
            blocked=blocked,
        )

    def _examine_safely(self, sidecar: Path, pipeline: str | None) -> _Verdict:
        """``_examine``, with anything it did not foresee turned into this drop's rejection."""
        try:
            return self._examine(sidecar, pipeline)
        except Exception as exc:  # noqa: BLE001 - any failure on one drop is that drop's, never the scan's
            shown = display(sidecar.name)
            if self._unexpected.get(sidecar) != repr(exc):  # once, not at every scan while it stays
                self._unexpected[sidecar] = repr(exc)
                logger.opt(exception=exc).warning("{}: unexpected error while reading the drop; rejecting it", shown)
            error = InputError(f"{shown}: cannot be read as a drop ({type(exc).__name__}: {exc})", file=shown)
            try:
                return self._rejected(sidecar, pipeline, None, error)
            except Exception:  # noqa: BLE001 - even its companions could not be listed: the sidecar goes alone
                return _Verdict(Drop(sidecar=sidecar, error=_short(error), pipeline=pipeline), pipeline=pipeline)

    def _examine(self, sidecar: Path, pipeline: str | None) -> _Verdict:
        """A drop when ready (or rejected); else why it waits."""
        try:
            mode = os.lstat(sidecar).st_mode
        except FileNotFoundError:
            return _GONE
        # A regular file settles first; anything else (link, FIFO, socket) is rejected at once.
        if stat.S_ISREG(mode) and not self._is_settled(sidecar):
            return _Verdict(reason="waiting for the sidecar to settle", pipeline=pipeline)
        problem = stem_problem(sidecar.stem)
        if problem is not None:
            shown = display(sidecar.name)
            return self._rejected(sidecar, pipeline, None, InputError(f"{shown}: {problem}", file=shown))
        raw = None
        try:
            raw = read_sidecar(sidecar, self.settings.max_sidecar_bytes)
            spec = effective_spec(raw, sidecar, pipeline, self.profiles)
            folders = lora_folders(self.settings, self.layout)
            loras = locate_loras(spec, folders, sidecar.name)
            media = locate_media(spec, sidecar)
        except InputError as exc:
            return self._rejected(sidecar, pipeline, raw, exc)
        # (field, file, what it is): a LoRA may be on its way too, like media.
        missing = [(fld, name, f"{fld} file {name}") for fld, name in media.missing.items()]
        if loras.missing:
            where = shown_folders(folders, self.layout.root)
            missing += [("loras", name, f"LoRA {name} (looked for in {where})") for name in loras.missing]
        if missing:
            return self._missing(sidecar, spec, raw, missing, list(media.found.values()))
        unsettled = [p.name for p in (*media.found.values(), *(f for f, _ in loras.found)) if not self._is_settled(p)]
        if unsettled:
            return _Verdict(reason=f"waiting for {', '.join(unsettled)} to settle", pipeline=spec.pipeline)
        try:
            for fld, path in media.found.items():
                self._check_media(sidecar, fld, path)
        except InputError as exc:
            return self._rejected(sidecar, pipeline, raw, exc)
        except FileNotFoundError:
            return _Verdict(reason="a media file disappeared while being read; looking again", pipeline=spec.pipeline)
        return _Verdict(Drop(sidecar=sidecar, spec=spec, media=media.found), pipeline=spec.pipeline)

    def _missing(
        self, sidecar: Path, spec: JobSpec, raw: dict, missing: list[tuple[str, str, str]], found: list[Path]
    ) -> _Verdict:
        """Wait for missing files up to the grace period, then reject naming the first one.
        ``missing``: (field, file name, how to name it in a message)."""
        first = self._first_seen.setdefault(sidecar, self.clock())
        fld, expected, what = missing[0]
        if self.clock() - first >= self.settings.grace_s:
            error = InputError(
                f"{sidecar.name}: {what} is still missing after {self.settings.grace_s:g} s", field=fld, file=expected
            )
            return self._rejected(sidecar, spec.pipeline, raw, error, found)
        return _Verdict(reason=f"waiting for {what} (up to {self.settings.grace_s:g} s)", pipeline=spec.pipeline)

    def _rejected(
        self, sidecar: Path, pipeline: str | None, raw: dict | None, error: InputError, files: list[Path] | None = None
    ) -> _Verdict:
        if not os.path.lexists(sidecar):
            return _GONE  # it went away while being read: nothing to reject
        extra = files if files is not None else companions_of_bad_sidecar(sidecar, raw)
        # Take the drop's files when they stopped changing, so a half-copied file is not cut off.
        unsettled = [display(p.name) for p in extra if os.path.isfile(p) and not os.path.islink(p) and not self._is_settled(p)]
        if unsettled:
            return _Verdict(reason=f"rejected; waiting for {', '.join(unsettled)} to settle", pipeline=pipeline)
        return _Verdict(Drop(sidecar=sidecar, error=_short(error), extra=tuple(extra), pipeline=pipeline), pipeline=pipeline)

    def _is_settled(self, path: Path) -> bool:
        settled = self._settled.get(path)
        if settled is None:  # a file outside the inbox folder (a LoRA): its clock runs across scans too
            self._elsewhere.add(path)
            return self.stability.settled(path)
        return settled

    def _check_media(self, sidecar: Path, fld: str, path: Path) -> None:
        """Within the size limit, and readable now (an unreadable file fails at once, with the reason)."""
        limits = self.settings.limits
        limit = limits.max_image_bytes if fld == "image" else limits.max_video_bytes
        try:
            size = os.stat(path).st_size
            probe_readable(path)
        except FileNotFoundError:
            raise
        except NotRegularFile as exc:
            raise InputError(f"{sidecar.name}: {fld} '{path.name}' is not a regular file ({exc.kind})", field=fld, file=path.name) from None
        except OSError as exc:
            why = "permission denied: the daemon's user needs read permission on it" if isinstance(exc, PermissionError) else exc.strerror
            raise InputError(f"{sidecar.name}: {fld} '{path.name}' cannot be read ({why})", field=fld, file=path.name) from None
        if size > limit:
            raise InputError(
                f"{sidecar.name}: {fld} '{path.name}' is {human_bytes(size)}, more than the limit of {human_bytes(limit)}",
                field=fld,
                file=path.name,
            )

    # --- claiming ---------------------------------------------------------------------------------

    def claim(self, drop: Drop, journal: Journal, tick: Callable[[], None] | None = None) -> Job | None:
        """Claim a ready drop: the job, or None when the claim failed (said once per sidecar; the drop
        then waits, with the reason, and is tried again every CLAIM_RETRY_S or when it changes).

        Only the journal's own errors (sqlite3.Error) come out: they are the daemon's, not the drop's.
        """
        shown = display(self.layout.rel(drop.sidecar))
        try:
            job = claim(drop, self.layout, journal, tick)
        except ClaimUndone as exc:
            self._claim_failed(drop.sidecar, exc.reason)
            return None
        except ClaimTaken as exc:
            logger.debug("{}: {}", shown, exc.message)
            return None
        except (sqlite3.Error, JournalError):
            raise
        except Exception as exc:  # noqa: BLE001 - a claim must not stop the loop
            # Some files moved: the claim stays recorded and recovery finishes it at the next start.
            logger.opt(exception=exc).error(
                "claiming {} stopped after its first file moved ({}); the claim is recorded and is finished at the next start",
                shown,
                exc,
            )
            return None
        self._claim_failures.pop(drop.sidecar, None)
        return job

    def _claim_failed(self, sidecar: Path, reason: str) -> None:
        before = self._claim_failures.get(sidecar)
        self._claim_failures[sidecar] = _ClaimFailure(reason, _key(sidecar), self.clock())
        shown = display(self.layout.rel(sidecar))
        if before is None or before.reason != reason:
            logger.error("{}: claim failed: {}; trying again every {:g} s, or when the file changes", shown, reason, CLAIM_RETRY_S)
        else:
            logger.debug("{}: claim failed again: {}", shown, reason)

    def _claim_due(self, sidecar: Path, failure: _ClaimFailure) -> bool:
        return self.clock() - failure.at >= CLAIM_RETRY_S or _key(sidecar) != failure.key


def _key(path: Path) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


def _short(error: InputError) -> InputError:
    """``error`` with its message cut to MAX_MESSAGE_CHARS (a message quoting a huge value)."""
    if len(error.message) <= MAX_MESSAGE_CHARS:
        return error
    return InputError(error.message[:MAX_MESSAGE_CHARS] + " [...]", field=error.field, file=error.file)


class _Wake(FileSystemEventHandler):
    def __init__(self, wake: Callable[[], None]) -> None:
        self.wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.wake()


class _QuietStopRace(logging.Filter):
    """watchdog's inotify emitter logs an ERROR when it is stopped during a read (a race in watchdog
    itself, harmless: the observer is going away). It is noise on every clean stop: drop just it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()


def start_watching(settings: Settings, layout: Layout, wake: Callable[[], None]) -> BaseObserver | None:
    """Events only wake the loop; when the observer cannot start, the periodic rescan still works."""
    inotify_log = logging.getLogger("watchdog.observers.inotify")
    if not any(isinstance(f, _QuietStopRace) for f in inotify_log.filters):
        inotify_log.addFilter(_QuietStopRace())
    observer: BaseObserver = PollingObserver(timeout=settings.poll_interval_s) if settings.poll else Observer()
    try:
        observer.schedule(_Wake(wake), str(layout.inbox), recursive=True)
        observer.daemon = True
        observer.start()
    except Exception as exc:  # noqa: BLE001 - e.g. inotify watch limit reached: the rescan still works
        logger.warning("cannot watch {} ({}); relying on the rescan every {:g} s", layout.inbox, exc, settings.rescan_interval_s)
        return None
    return observer
