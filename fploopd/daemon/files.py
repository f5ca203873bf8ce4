"""Small file helpers of the daemon: idempotent moves, reading what a user dropped without ever
blocking on it."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fploopd.fsutil import rename_durable, sha256_file


def move_once(src: Path, dst: Path) -> str:
    """Rename ``src`` to ``dst`` unless that already happened; safe to repeat after a crash.

    Returns "moved", "already" (``dst`` exists and ``src`` does not), "conflict" (both exist:
    ``dst`` belongs to someone else) or "missing" (neither exists).
    """
    src_there, dst_there = os.path.lexists(src), os.path.lexists(dst)
    if dst_there:
        return "conflict" if src_there else "already"
    if not src_there:
        return "missing"
    rename_durable(src, dst)
    return "moved"


# Never block on a FIFO put where a file was: O_NONBLOCK makes opening one return at once (and a
# regular file reads the same with it). Windows has neither flag, nor FIFOs in folders.
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
# Opening a file another program holds open for writing: Windows sharing and lock violations
# (winerror 32, 33) and what CIFS mounts report for them (EBUSY, ETXTBSY).
_LOCKED_WINERRORS = (32, 33)
_LOCKED_ERRNOS = (errno.EBUSY, errno.ETXTBSY)


class NotRegularFile(Exception):
    """The path is something else than a regular file (``kind`` says what, in plain words)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def file_kind(mode: int) -> str:
    """What a non-regular file is, for messages: "a folder", "a FIFO (named pipe)", ..."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _open_regular(path: Path, follow: bool) -> int:
    fd = os.open(path, os.O_RDONLY | _NONBLOCK | (0 if follow else _NOFOLLOW))
    try:
        mode = os.fstat(fd).st_mode
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotRegularFile(file_kind(mode))
    return fd


def probe_readable(path: Path) -> None:
    """Open ``path`` for reading and close it, never blocking. Raises OSError or NotRegularFile."""
    os.close(_open_regular(path, follow=True))


def read_regular(path: Path, limit: int) -> bytes:
    """Up to ``limit`` bytes of the regular file ``path`` (not following a link), never blocking."""
    fd = _open_regular(path, follow=False)
    with os.fdopen(fd, "rb") as f:
        return f.read(limit)


def is_locked_for_writing(exc: OSError) -> bool:
    """Whether opening failed because another program is still writing the file (try again later)."""
    return getattr(exc, "winerror", None) in _LOCKED_WINERRORS or exc.errno in _LOCKED_ERRNOS


def input_record(path: Path, field: str, tick: Callable[[], None] | None = None) -> dict[str, Any]:
    """What a job records of one input file: its name and field, and its size and sha256 when it is a
    regular file that can be read. Never opens a FIFO or follows a link (hashing must not block or
    leave the folder); an unreadable file is recorded as such (the job fails on it later, or was
    rejected for it already) instead of raising."""
    entry: dict[str, Any] = {"field": field, "name": path.name}
    try:
        if stat.S_ISREG(os.lstat(path).st_mode):
            entry["size"] = os.path.getsize(path)
            entry["sha256"] = sha256_file(path, tick)
    except OSError as exc:
        entry["unreadable"] = exc.strerror or str(exc)
    return entry
