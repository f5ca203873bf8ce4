"""Small file helpers of the daemon: hashing with a heartbeat, idempotent moves."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from fploopd.fsutil import rename_durable

CHUNK = 4 * 1024 * 1024


def sha256_file(path: Path, tick: Callable[[], None] | None = None) -> str:
    """The file's SHA-256; ``tick`` is called between chunks (the service watchdog keeps beating)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            if tick is not None:
                tick()
    return digest.hexdigest()


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
