"""Files that appear atomically: write under a temporary name in the same folder, fsync, rename.

A reader (OBS, an editing tool, the daemon after a crash) sees either nothing or the whole file.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HASH_CHUNK = 4 * 1024 * 1024


def sha256_file(path: Path, tick: Callable[[], None] | None = None) -> str:
    """The file's SHA-256; ``tick`` is called between chunks (the service watchdog keeps beating)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
            if tick is not None:
                tick()
    return digest.hexdigest()


@functools.cache
def _umask() -> int:
    # os.umask can only be read by setting it; do it once, before any worker threads write files.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def public_mode(path: Path, *, folder: bool = False) -> None:
    """Give a temp file (mkstemp: 0600) the mode a plain ``open`` would: OBS, editors and SMB
    shares often read the outbox as another user."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows cannot open folders
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is fsynced and renamed onto ``target``.

    The temporary name ends in ``.part`` (plus ``suffix``, for writers that pick a format from the
    extension) so watchers skip it. On error the temporary file is left for inspection, not deleted.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".part{suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    yield tmp
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    public_mode(tmp)
    os.replace(tmp, target)
    fsync_dir(target.parent)


def write_bytes_atomic(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(target: Path, obj: Any) -> None:
    write_bytes_atomic(target, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def rename_durable(src: Path, dst: Path) -> None:
    """Rename (never copy) and make both folders' entries durable. Fails if ``dst`` exists."""
    if dst.exists():
        raise FileExistsError(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.rename(src, dst)
    fsync_dir(dst.parent)
    if src.parent != dst.parent:
        fsync_dir(src.parent)


def adopt_owner(path: Path, root: Path, *, tree: bool = True) -> None:
    """Give what the daemon made under ``root`` the root folder's owner and group, where the process
    may (it runs as root, say under systemd): a user's share must not fill with files only root can
    move. ``path`` and, with ``tree``, everything in it; links are left alone. Elsewhere a no-op."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return
    try:
        want = os.stat(root)
    except OSError:
        return
    targets = [Path(path)]
    if tree and Path(path).is_dir() and not Path(path).is_symlink():
        for dirpath, dirs, files in os.walk(path):
            targets += [Path(dirpath) / n for n in (*dirs, *files)]
    for target in targets:
        try:
            st = os.lstat(target)
            if (st.st_uid, st.st_gid) != (want.st_uid, want.st_gid):
                os.lchown(target, want.st_uid, want.st_gid)
        except OSError:
            pass  # best effort: a file the user owns already, a share that refuses chown
