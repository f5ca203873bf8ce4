"""``fploopd journal migrate --to postgresql://...``: a single-host SQLite journal moved, row for
row, into an empty PostgreSQL journal, so that more hosts can join the root.

Under the root lock (no daemon may run), in one PostgreSQL transaction (all rows or none). The
SQLite file is then moved aside (kept, never deleted): a host left on the old setting cannot go on
with a second copy of the queue.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from fploopd.daemon.journal import Journal, JournalError
from fploopd.daemon.layout import Layout
from fploopd.daemon.pgjournal import PgJournal
from fploopd.daemon.service import RootLock, RootLockedError

# What moves; ``waiting`` and ``daemon`` are the running daemon's view, rewritten at its start.
TABLES = ("jobs", "events", "claims", "hook_rounds", "hook_runs")


@dataclass
class Migration:
    rows: dict[str, int] = field(default_factory=dict)
    moved_aside: Path | None = None

    def summary(self) -> str:
        counts = ", ".join(f"{n} {table}" for table, n in self.rows.items())
        return f"moved {counts}" + (f"; the SQLite journal is kept as {self.moved_aside}" if self.moved_aside else "")


def migrate(layout: Layout, url: str) -> Migration:
    lock = RootLock(layout.lock)
    if not lock.acquire():
        raise RootLockedError(
            f"a fploopd daemon (pid {lock.holder()}) is running on {layout.root}: stop it, then migrate", file=str(layout.lock)
        )
    try:
        if not layout.journal.exists():
            raise JournalError(f"there is no SQLite journal to move at {layout.journal}", file=str(layout.journal))
        source = Journal(layout.journal, "migrate", check=True)  # brought to the current schema first
        target = PgJournal(url, "migrate")
        try:
            result = _copy(source, target)
        finally:
            source.close()
            target.close()
        aside = layout.journal.with_name(f"{layout.journal.name}.migrated-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{layout.journal}{suffix}")
            if src.exists():
                src.rename(Path(f"{aside}{suffix}"))
        result.moved_aside = aside
        return result
    finally:
        lock.release()


def _copy(source: Journal, target: PgJournal) -> Migration:
    result = Migration()
    with target.transaction():
        if target.db.execute("SELECT count(*) FROM jobs").fetchone()[0]:
            raise JournalError(f"the journal database {target.path} already has jobs: migrate only into an empty one", file=target.path)
        for table in TABLES:
            columns = [r["name"] for r in source.db.execute(f"PRAGMA table_info({table})")]
            rows = source.db.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()
            marks = ", ".join("?" * len(columns))
            target.db.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", [tuple(r) for r in rows])
            result.rows[table] = len(rows)
        # The events' numbering goes on after the copied ones.
        target.db.execute("SELECT setval(pg_get_serial_sequence('events', 'seq'), (SELECT coalesce(max(seq), 0) + 1 FROM events), false)")
    return result
