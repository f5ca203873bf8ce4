"""Intake (design.md §3): find sidecars in the inbox, wait until they and their media are stable, and
hand over drops that are ready to claim (or rejected, with the files that go to failed/ with them).

A full scan is the truth; watchdog events only wake the loop early (shares send none, and
watchdog drops events on overflow). Stability is judged across scans: a file is ready when its
size and mtime have not changed for ``settle_s`` and it can be opened for reading.
"""

from __future__ import annotations

import logging
import os
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

from fploopd.daemon.claim import Drop
from fploopd.daemon.layout import Layout, is_temporary_name
from fploopd.daemon.profiles import Profiles
from fploopd.daemon.settings import Settings
from fploopd.daemon.sidecar import companions_of_bad_sidecar, effective_spec, locate_media, read_sidecar
from fploopd.errors import InputError
from fploopd.media.limits import human_bytes


class Stability:
    """Remembers each file's (size, mtime) and since when it has not changed."""

    def __init__(self, settle_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.settle_s = settle_s
        self.clock = clock
        self._seen: dict[Path, tuple[tuple[int, int], float]] = {}

    def settled(self, path: Path) -> bool:
        try:
            st = os.stat(path)
        except OSError:
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
        try:  # Windows and some shares lock a file that is still being written
            with open(path, "rb"):
                pass
        except OSError:
            return False
        return True

    def forget_except(self, keep: set[Path]) -> None:
        for path in set(self._seen) - keep:
            del self._seen[path]


@dataclass
class ScanResult:
    ready: list[Drop] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # why each waiting drop waits


class Intake:
    def __init__(self, settings: Settings, layout: Layout, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.layout = layout
        self.profiles = Profiles(layout.profiles)
        self.clock = clock
        self.stability = Stability(settings.settle_s, clock)
        self._first_seen: dict[Path, float] = {}  # sidecar -> when it was first seen complete
        self._said: dict[Path, str] = {}  # the last "waiting" message logged per sidecar
        self._settled: dict[Path, bool] = {}  # this scan's stability verdicts

    def scan(self) -> ScanResult:
        result = ScanResult()
        sidecars: set[Path] = set()
        seen: set[Path] = set()
        for folder, pipeline in self.layout.inbox_folders():
            try:
                names = sorted(os.listdir(folder))
            except (FileNotFoundError, NotADirectoryError):
                continue
            # Every file's clock starts when first seen, so media settle while the sidecar does.
            self._settled = {folder / n: self.stability.settled(folder / n) for n in names if not is_temporary_name(n)}
            seen |= set(self._settled)
            for name in names:
                if is_temporary_name(name) or not name.lower().endswith(".json"):
                    continue
                sidecar = folder / name
                if os.path.isdir(sidecar) and not os.path.islink(sidecar):
                    continue  # a folder named *.json is nobody's sidecar
                sidecars.add(sidecar)
                drop, why = self._examine(sidecar, pipeline)
                if drop is not None:
                    result.ready.append(drop)
                    self._first_seen.pop(sidecar, None)
                    self._said.pop(sidecar, None)
                elif why:
                    result.waiting.append(why)
                    if self._said.get(sidecar) != why:
                        self._said[sidecar] = why
                        logger.log("DEBUG" if why.endswith("settle") else "INFO", "{}", why)
        for gone in set(self._first_seen) - sidecars:
            del self._first_seen[gone]
        for gone in set(self._said) - sidecars:
            del self._said[gone]
        self.stability.forget_except(seen)
        return result

    def _examine(self, sidecar: Path, pipeline: str | None) -> tuple[Drop | None, str]:
        """A drop when ready (or rejected); else None and why it waits."""
        rel = self.layout.rel(sidecar)
        if not self._is_settled(sidecar) and not os.path.islink(sidecar):
            return None, f"{rel}: waiting for the sidecar to settle"  # (a link is rejected at once below)
        raw = None
        try:
            raw = read_sidecar(sidecar, self.settings.max_sidecar_bytes)
            spec = effective_spec(raw, sidecar, pipeline, self.profiles)
            media = locate_media(spec, sidecar)
            for fld, path in media.found.items():
                self._check_size(sidecar, fld, path)
        except InputError as exc:
            return self._rejected(sidecar, pipeline, raw, exc)
        if media.missing:
            first = self._first_seen.setdefault(sidecar, self.clock())
            fld, expected = next(iter(media.missing.items()))
            if self.clock() - first >= self.settings.grace_s:
                error = InputError(
                    f"{sidecar.name}: {fld} file {expected} is still missing after {self.settings.grace_s:g} s",
                    field=fld,
                    file=expected,
                )
                return self._rejected(sidecar, pipeline, raw, error, list(media.found.values()))
            return None, f"{rel}: waiting for {fld} file {expected} (up to {self.settings.grace_s:g} s)"
        unsettled = [p.name for p in media.found.values() if not self._is_settled(p)]
        if unsettled:
            return None, f"{rel}: waiting for {', '.join(unsettled)} to settle"
        return Drop(sidecar=sidecar, spec=spec, media=media.found), ""

    def _rejected(
        self, sidecar: Path, pipeline: str | None, raw: dict | None, error: InputError, files: list[Path] | None = None
    ) -> tuple[Drop | None, str]:
        extra = files if files is not None else companions_of_bad_sidecar(sidecar, raw)
        # Take the drop's files when they stopped changing, so a half-copied file is not cut off.
        unsettled = [p.name for p in extra if not os.path.islink(p) and not self._is_settled(p)]
        if unsettled:
            return None, f"{self.layout.rel(sidecar)}: rejected; waiting for {', '.join(unsettled)} to settle"
        return Drop(sidecar=sidecar, error=error, extra=tuple(extra), pipeline=pipeline), ""

    def _is_settled(self, path: Path) -> bool:
        settled = self._settled.get(path)
        return self.stability.settled(path) if settled is None else settled

    def _check_size(self, sidecar: Path, fld: str, path: Path) -> None:
        limits = self.settings.limits
        limit = limits.max_image_bytes if fld == "image" else limits.max_video_bytes
        size = os.stat(path).st_size
        if size > limit:
            raise InputError(
                f"{sidecar.name}: {fld} '{path.name}' is {human_bytes(size)}, more than the limit of {human_bytes(limit)}",
                field=fld,
                file=path.name,
            )


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
    except Exception as exc:  # e.g. inotify watch limit reached
        logger.warning("cannot watch {} ({}); relying on the rescan every {:g} s", layout.inbox, exc, settings.rescan_interval_s)
        return None
    return observer
