"""Doctor's checks of where the journal lives: SQLite never on a network file system (its locking
and WAL do not work there), and a PostgreSQL journal reachable, of this fploopd's schema, with the
clocks of this host and the database close enough for leases to mean what they say."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

# File system types of /proc/self/mountinfo that are network shares (or behave like them).
NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre", "afs", "fuse.sshfs", "fuse.rclone", "fuse.s3fs", "davfs", "fuse.davfs2")
# Leases are compared with each host's own clock: skew eats into lease_s. Warn beyond a fraction of it.
SKEW_WARN_FRACTION = 0.1


def unescape(field: str) -> str:
    """mountinfo writes spaces, tabs, newlines and backslashes in paths as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def mounts(mountinfo: str) -> list[tuple[str, str]]:
    """(mount point, file system type) of each line of /proc/self/mountinfo."""
    out = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        out.append((unescape(fields[4]), right.split()[0]))
    return out


def fs_type(path: Path, mountinfo: str | None = None) -> str | None:
    """The type of the file system ``path`` is on (the longest mount point above it), or None where
    /proc/self/mountinfo cannot be read (not Linux)."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
    real = os.path.realpath(path)
    best: tuple[int, str] | None = None
    for point, kind in mounts(mountinfo):
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= best[0]):
            best = (len(point), kind)
    return None if best is None else best[1]


def is_network(kind: str | None) -> bool:
    return kind is not None and (kind in NETWORK_FS or kind.startswith(("nfs", "fuse.sshfs")))


def postgres_facts(url: str, host: str) -> dict[str, Any]:
    """Reach the database and read what doctor shows: server version, schema version, the clock
    skew (the database's clock minus this host's, from the middle of the round trip), the hosts."""
    from fploopd.daemon.pgjournal import PgJournal, redact

    journal = PgJournal(url, "doctor", readonly=True, host=host)
    try:
        before = time.time()
        server = journal.server_time()
        after = time.time()
        version = journal.db.execute("SHOW server_version").fetchone()[0]
        schema = journal.schema_version()
        hosts = sorted(k.split("@", 1)[1] for k in journal.daemon_state() if k.startswith("supervisor@"))
    finally:
        journal.close()
    return {
        "where": redact(url),
        "server_version": version,
        "schema": schema,
        "skew_s": server - (before + after) / 2,
        "round_trip_s": after - before,
        "hosts": hosts,
    }
