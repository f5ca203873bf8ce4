"""The journal (docs/design.md §4): SQLite at ``.fploopd/journal.sqlite3``, WAL, synchronous FULL.

Every state transition is committed before the action it announces, together with an event row.
The ``claims`` table holds claims in flight (the moves out of the inbox, recorded before the first
rename); a job row exists once its inputs are all in its work dir.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from fploopd.daemon.plan import DeliveryPlan
from fploopd.errors import ErrorRecord, FploopdError


class JobState(str, Enum):
    """A job's state. The values are a contract (the journal, ``fploopd status --json``), and a
    member is its value wherever a string is read: f-strings, JSON, SQLite. (Not enum.StrEnum:
    Python 3.10 is supported.)"""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


STATES = tuple(JobState)
TERMINAL = (JobState.DONE, JobState.FAILED, JobState.CANCELLED)
# The contract's state machine, plus running -> queued (crash, warm stop, retry after backoff) and
# failed or cancelled -> queued (fploopd retry). A rejected drop is created directly in `failed`.
TRANSITIONS = {
    (JobState.QUEUED, JobState.RUNNING),
    (JobState.QUEUED, JobState.CANCELLED),
    (JobState.RUNNING, JobState.DONE),
    (JobState.RUNNING, JobState.FAILED),
    (JobState.RUNNING, JobState.CANCELLED),
    (JobState.RUNNING, JobState.QUEUED),
    (JobState.FAILED, JobState.QUEUED),
    (JobState.CANCELLED, JobState.QUEUED),
}
# 1: jobs, events, claims. 2: jobs.failures (the retry budget, apart from attempts), the drops
# waiting in the inbox and the daemon's own state (both for `fploopd status`). 3: delivery hooks
# (hook_rounds: the deliveries whose follow-ups were planned; hook_runs: each hook's run of one).
# 4: several hosts (fploopd.daemon.pgjournal): jobs.host, lease_until and fence (the attempt number
# that fences a lost lease), claims.sidecar (a drop is claimed once), host and lease_until.
SCHEMA_VERSION = 4

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE COLLATE NOCASE,
    pipeline TEXT,
    spec TEXT,
    seeds TEXT,
    inputs TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    attempts INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    priority INTEGER NOT NULL DEFAULT 0,
    progress TEXT,
    error TEXT,
    outputs TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    delivery TEXT,
    delivered_at REAL,
    worker TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_next ON jobs (state, priority DESC, created_at);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT,
    at REAL NOT NULL,
    who TEXT NOT NULL,
    what TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id, seq);
CREATE TABLE IF NOT EXISTS claims (
    job_id TEXT PRIMARY KEY,
    name TEXT NOT NULL COLLATE NOCASE,
    record TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS waiting (
    sidecar TEXT PRIMARY KEY,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS daemon (
    key TEXT PRIMARY KEY,
    value TEXT,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS hook_rounds (
    job_id TEXT NOT NULL,
    delivered_at REAL NOT NULL,
    state TEXT NOT NULL,
    planned_at REAL NOT NULL,
    PRIMARY KEY (job_id, delivered_at)
);
CREATE TABLE IF NOT EXISTS hook_runs (
    job_id TEXT NOT NULL,
    hook TEXT NOT NULL,
    delivered_at REAL NOT NULL,
    state TEXT NOT NULL,
    key TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'done', 'failed')),
    tries INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    last TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (job_id, hook, delivered_at)
);
CREATE INDEX IF NOT EXISTS hook_runs_due ON hook_runs (status, next_at);
"""
# Every delivery of a job that ended (done, failed, cancelled) gets one hook round; these are the
# ones without (``fploopd.daemon.followup`` plans them).
UNPLANNED_DELIVERIES = (
    "FROM jobs WHERE state IN ('done', 'failed', 'cancelled') AND delivered_at IS NOT NULL AND NOT EXISTS"
    " (SELECT 1 FROM hook_rounds r WHERE r.job_id = jobs.id AND r.delivered_at = jobs.delivered_at)"
)
# Columns added after version 1, for journals made by an older fploopd (CREATE TABLE IF NOT EXISTS
# leaves an existing table as it was).
_ADDED_COLUMNS = {
    ("jobs", "failures"): "INTEGER NOT NULL DEFAULT 0",
    ("jobs", "host"): "TEXT",
    ("jobs", "lease_until"): "REAL",
    ("jobs", "fence"): "INTEGER NOT NULL DEFAULT 0",
    ("claims", "sidecar"): "TEXT",
    ("claims", "host"): "TEXT",
    ("claims", "lease_until"): "REAL",
}
# After the added columns exist.
_INDEXES = (
    "CREATE UNIQUE INDEX IF NOT EXISTS claims_sidecar ON claims (sidecar)",
    "CREATE UNIQUE INDEX IF NOT EXISTS claims_name ON claims (name COLLATE NOCASE)",
)

_JSON_COLUMNS = ("spec", "seeds", "inputs", "progress", "error", "outputs", "delivery")
# What an older journal's rows lack, as read (read-only opening never adds the columns).
_ROW_DEFAULTS = {"failures": 0, "host": None, "lease_until": None, "fence": 0}

# At open, a journal another process keeps locked is reported after this long instead of waited on.
OPEN_WAIT_S = 5.0
# In operation, a writer waits this long for another one (a CLI command's short transaction).
BUSY_TIMEOUT_S = 30.0
CHOICES = 50  # due jobs of the top priority that claim_next's ``choose`` may pick from


class JournalError(FploopdError):
    """The journal cannot be used: missing while the root shows it had one, damaged, or locked."""

    kind = "journal"


class JournalAway(JournalError):
    """The journal's database (PostgreSQL) cannot be reached just now: the daemon takes no new work,
    keeps what it runs, and reconnects with backoff."""


def recover_advice(path: Path) -> str:
    root = path.parent.parent  # <root>/.fploopd/journal.sqlite3
    return (
        f"stop the daemon and run `fploopd journal recover --root {root}`: it moves the damaged file aside "
        "(nothing is deleted) and rebuilds the jobs from outbox/, failed/ and archive/"
    )


def open_error(path: Path, exc: sqlite3.Error) -> JournalError:
    """A clear error for what SQLite said while opening or checking ``path``."""
    text = str(exc)
    if "locked" in text or "busy" in text:
        return JournalError(
            f"the journal {path} is locked by another process (waited {OPEN_WAIT_S:.0f} s): another fploopd "
            "command, or a program that has it open (an SQLite browser, a backup tool); close it and start again",
            file=str(path),
        )
    if "full" in text:  # "database or disk is full": nothing is wrong with the journal itself
        return JournalError(f"cannot write the journal {path}: the disk is full; free some space and start again", file=str(path))
    if "unable to open" in text or "readonly" in text or "read-only" in text:
        return JournalError(
            f"cannot open the journal {path} ({text}): the daemon's user needs to read and write .fploopd/",
            file=str(path),
        )
    return JournalError(
        f"the journal {path} is damaged ({text}); move it aside and rebuild it: {recover_advice(path)}",
        file=str(path),
    )


class IllegalTransition(RuntimeError):
    pass


class LeaseLost(IllegalTransition):
    """The job is no longer this host's to change: its lease expired and it was requeued or taken
    by another host (its fence moved on). What this host made of it is discarded."""


class NameTaken(Exception):
    """Another claim took this job name a moment ago (several hosts): pick the next free one."""


class ClaimTaken(FploopdError):
    """Another host claimed this drop first (decided in the journal before any file moved)."""

    kind = "claim"


@dataclass(frozen=True)
class Job:
    id: str
    name: str
    pipeline: str | None
    spec: dict[str, Any] | None
    seeds: list[int] | None
    inputs: list[dict[str, Any]]
    state: JobState
    attempts: int  # earlier tries that failed or were interrupted (status, manifest)
    failures: int  # failed tries since the job was queued or retried: the budget of max_attempts
    next_attempt_at: float
    priority: int
    progress: dict[str, Any] | None
    error: ErrorRecord | None
    outputs: list[dict[str, Any]] | None
    cancel_requested: bool
    delivery: DeliveryPlan | None
    delivered_at: float | None
    worker: str | None
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    host: str | None = None  # the host that holds it while running
    lease_until: float | None = None  # until when, unless renewed
    fence: int = 0  # the attempt number, counting every claim: transitions of a run are conditional on it

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        values = {**_ROW_DEFAULTS, **dict(row)}
        for key in _JSON_COLUMNS:
            if values[key] is not None:
                values[key] = json.loads(values[key])
        values["cancel_requested"] = bool(values["cancel_requested"])
        values["state"] = JobState(values["state"])
        if values["error"] is not None:
            values["error"] = ErrorRecord.from_json(values["error"])
        if values["delivery"] is not None:
            values["delivery"] = DeliveryPlan.from_json(values["delivery"])
        return cls(**values)


def _plain(value: Any) -> Any:
    """What JSON stores of a typed value (an ErrorRecord, a DeliveryPlan): its ``to_json()``."""
    to_json = getattr(value, "to_json", None)
    return to_json() if callable(to_json) else str(value)


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=_plain)


def _columns(fields: dict[str, Any]) -> dict[str, Any]:
    """Job fields as SQLite values: JSON text for the JSON columns, a state as its string."""
    return {
        k: _dump(v) if k in _JSON_COLUMNS else v.value if isinstance(v, JobState) else v for k, v in fields.items()
    }


class Journal:
    """The journal on SQLite (one host). ``fploopd.daemon.pgjournal.PgJournal`` is the same journal
    on PostgreSQL (several hosts): the SQL here is written for both (``?`` placeholders, ON CONFLICT,
    no SQLite-only functions), and what differs sits in the attributes and methods it overrides."""

    multi_host = False  # several daemons share the journal: leases, fencing and claim races matter
    _NAME_IS = "name = ?"  # the name column compares case-insensitively (COLLATE NOCASE)
    _LOCK_ROW = ""  # a transaction's read of a row it will change (BEGIN IMMEDIATE locks them all)
    _SKIP_LOCKED = ""  # claim_next's read of the queue
    _DUPLICATE: tuple[type[Exception], ...] = (sqlite3.IntegrityError,)  # a unique key refused a row

    def __init__(
        self,
        path: Path,
        who: str,
        *,
        check: bool = False,
        readonly: bool = False,
        host: str | None = None,
        lease_s: float = 60.0,
    ) -> None:
        """``who`` tags the events this connection writes (``supervisor``, ``cli``); the pid is added.
        ``host`` names this machine in what it claims (with a lease of ``lease_s``, renewed by ``renew``).

        ``check`` runs ``PRAGMA quick_check`` first (the supervisor, at start). ``readonly`` opens
        without writing anything (``open_readonly``). Raises JournalError for a damaged, locked or
        unreadable journal.
        """
        self.path = path
        self.who = f"{who}:{os.getpid()}"
        self.readonly = readonly
        self.host = host
        self.lease_s = lease_s
        if not readonly:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.db = self._connect_readonly() if readonly else self._connect()
        try:
            if check:
                self.quick_check()
            if not readonly:
                self._configure()
                self._migrate()
            # Operation: wait as long as before for a writer (opening waited only OPEN_WAIT_S).
            self.db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            self.tables = self._table_names()
        except sqlite3.Error as exc:
            self.db.close()
            raise open_error(path, exc) from None
        except JournalError:
            self.db.close()
            raise

    def _table_names(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    @classmethod
    def open_readonly(cls, path: Path, who: str) -> Journal:
        """For looking only (``fploopd status``, doctor): no schema, no pragma that writes, so it works
        on a full disk and on a journal of an older schema."""
        return cls(path, who, readonly=True)

    def _connect(self) -> sqlite3.Connection:
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE takes the write lock up front).
        try:
            db = sqlite3.connect(self.path, timeout=OPEN_WAIT_S, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise open_error(self.path, exc) from None
        db.row_factory = sqlite3.Row
        return db

    def _connect_readonly(self) -> sqlite3.Connection:
        uri = self.path.absolute().as_uri() + "?mode=ro"
        try:
            return self._probe(uri)
        except sqlite3.OperationalError as exc:
            # A WAL journal with no -wal file beside it (no writer has it open) in a folder we may not
            # write: SQLite cannot make its shared-memory file there, but nothing can change the file
            # either, so reading it as immutable is exact.
            if Path(f"{self.path}-wal").exists():
                raise open_error(self.path, exc) from None
            try:
                return self._probe(uri + "&immutable=1")
            except sqlite3.Error:
                raise open_error(self.path, exc) from None
        except sqlite3.Error as exc:
            raise open_error(self.path, exc) from None

    def _probe(self, uri: str) -> sqlite3.Connection:
        """Connect to ``uri`` and read the schema once (SQLite opens the file lazily)."""
        db = sqlite3.connect(uri, uri=True, timeout=OPEN_WAIT_S, isolation_level=None, check_same_thread=False)
        try:
            db.row_factory = sqlite3.Row
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _configure(self) -> None:
        mode = self.db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":  # e.g. a network file system without shared memory
            from loguru import logger

            logger.warning("the journal {} runs in {} mode, not WAL; keep .fploopd/ on a local disk", self.path, mode)
        self.db.execute("PRAGMA synchronous = FULL")
        self.db.execute("PRAGMA foreign_keys = ON")

    def _migrate(self) -> None:
        """Create or upgrade the schema in one write transaction, which also proves, within
        OPEN_WAIT_S, that no other process keeps the journal locked. Writes nothing when current."""
        with self.transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self.db.execute(statement)  # IF NOT EXISTS: a no-op on a current journal
            self._add_columns()
            for index in _INDEXES:
                self.db.execute(index)
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version < 3:
                self._mark_rounds_planned()  # hooks added now are for deliveries from now on
            if version < SCHEMA_VERSION:
                self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _mark_rounds_planned(self, job_id: str | None = None) -> None:
        """Record the deliveries made so far (or ``job_id``'s) as having had their hooks: a journal
        from before hooks, or a job rebuilt by recover, must not fire them for old deliveries."""
        where = "" if job_id is None else " AND id = ?"
        self.db.execute(
            f"INSERT INTO hook_rounds (job_id, delivered_at, state, planned_at) "
            f"SELECT id, delivered_at, state, ? {UNPLANNED_DELIVERIES}{where} ON CONFLICT DO NOTHING",
            (time.time(), *(() if job_id is None else (job_id,))),
        )

    def quick_check(self) -> None:
        """``PRAGMA quick_check``; raises JournalError naming the damage."""
        problems = [r[0] for r in self.db.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            raise JournalError(
                f"the journal {self.path} is damaged ({'; '.join(problems[:3])}); move it aside and rebuild it: "
                f"{recover_advice(self.path)}",
                file=str(self.path),
            )

    def _add_columns(self) -> None:
        for (table, column), decl in _ADDED_COLUMNS.items():
            have = {r["name"] for r in self.db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _event(self, job_id: str | None, what: str, detail: Any = None) -> None:
        self.db.execute(
            "INSERT INTO events (job_id, at, who, what, detail) VALUES (?, ?, ?, ?, ?)",
            (job_id, time.time(), self.who, what, _dump(detail)),
        )

    def event(self, job_id: str | None, what: str, detail: Any = None) -> None:
        with self.transaction():
            self._event(job_id, what, detail)

    # --- claims -------------------------------------------------------------------------------

    def name_taken(self, name: str) -> bool:
        row = self.db.execute(
            f"SELECT 1 FROM jobs WHERE {self._NAME_IS} UNION ALL SELECT 1 FROM claims WHERE {self._NAME_IS} LIMIT 1",
            (name, name),
        ).fetchone()
        return row is not None

    def open_claim(self, job_id: str, name: str, record: dict[str, Any]) -> None:
        """Record a claim (its job and the moves it will make) before the first move. The first
        move's source (the sidecar) is a unique key: raises ClaimTaken when another host's claim of
        the same drop is in flight, and NameTaken when another claim took ``name`` just now."""
        # As JSON text: a file name that is not UTF-8 (surrogate escapes) is stored exactly, as in ``record``.
        sidecar = _dump(record["moves"][0]["src"]) if record.get("moves") else None
        now = time.time()
        try:
            with self.transaction():
                self.db.execute(
                    "INSERT INTO claims (job_id, name, record, created_at, sidecar, host, lease_until)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (job_id, name, _dump(record), now, sidecar, self.host, now + self.lease_s),
                )
                self._event(job_id, "claim", record)
        except self._DUPLICATE:
            if sidecar is not None and self.db.execute("SELECT 1 FROM claims WHERE sidecar = ?", (sidecar,)).fetchone():
                raise ClaimTaken(f"{sidecar} is being claimed by another host", file=sidecar) from None
            raise NameTaken(name) from None

    def open_claims(self, host: str | None = None) -> list[tuple[str, str, dict[str, Any]]]:
        """Claims in flight: all, or those of ``host`` (a restarted host's own, left by its crash)."""
        where, args = ("", ()) if host is None else (" WHERE host = ?", (host,))
        rows = self.db.execute(f"SELECT job_id, name, record FROM claims{where} ORDER BY created_at", args).fetchall()
        return [(r["job_id"], r["name"], json.loads(r["record"])) for r in rows]

    def take_stale_claims(self, now: float | None = None) -> list[tuple[str, str, dict[str, Any]]]:
        """Claims of other hosts whose lease ran out (the host died halfway): now this host's to finish."""
        now = time.time() if now is None else now
        taken = []
        for row in self.db.execute(
            "SELECT job_id, name, record FROM claims WHERE lease_until < ? AND (host IS NULL OR host <> ?)", (now, self.host)
        ).fetchall():
            with self.transaction():
                moved = self.db.execute(
                    "UPDATE claims SET host = ?, lease_until = ? WHERE job_id = ? AND lease_until < ?",
                    (self.host, now + self.lease_s, row["job_id"], now),
                ).rowcount
                if moved:
                    self._event(row["job_id"], "claim taken over", {"host": self.host})
            if moved:
                taken.append((row["job_id"], row["name"], json.loads(row["record"])))
        return taken

    def known(self, job_id: str) -> bool:
        """A job or a claim in flight has this id (one read: a claim turns into its job atomically)."""
        row = self.db.execute(
            "SELECT 1 FROM jobs WHERE id = ? UNION ALL SELECT 1 FROM claims WHERE job_id = ? LIMIT 1", (job_id, job_id)
        ).fetchone()
        return row is not None

    def drop_claim(self, job_id: str) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM claims WHERE job_id = ?", (job_id,))

    def close_claim(
        self,
        job_id: str,
        *,
        name: str,
        pipeline: str | None,
        spec: dict[str, Any] | None,
        seeds: list[int] | None,
        inputs: list[dict[str, Any]],
        priority: int = 0,
        error: ErrorRecord | None = None,
        delivery: DeliveryPlan | None = None,
    ) -> Job:
        """The claim's moves are done: the job exists, ``queued``, or ``failed`` when ``error`` is given."""
        now = time.time()
        state = JobState.FAILED if error is not None else JobState.QUEUED
        with self.transaction():
            self.db.execute(
                "INSERT INTO jobs (id, name, pipeline, spec, seeds, inputs, state, priority, error, delivery,"
                " created_at, updated_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    name,
                    pipeline,
                    _dump(spec),
                    _dump(seeds),
                    _dump(inputs),
                    state.value,
                    priority,
                    _dump(error),
                    _dump(delivery),
                    now,
                    now,
                    now if error is not None else None,
                ),
            )
            self.db.execute("DELETE FROM claims WHERE job_id = ?", (job_id,))
            self._event(job_id, state.value, error)
        return self.get(job_id)

    # --- jobs ---------------------------------------------------------------------------------

    def restore(self, fields: dict[str, Any], detail: Any = None) -> Job:
        """Insert a job rebuilt from the folders (``fploopd journal recover``), with a ``recovered`` event."""
        values = _columns(fields)
        columns, marks = ", ".join(values), ", ".join("?" * len(values))
        with self.transaction():
            self.db.execute(f"INSERT INTO jobs ({columns}) VALUES ({marks})", tuple(values.values()))
            self._mark_rounds_planned(fields["id"])  # its hooks ran (or not) long ago
            self._event(fields["id"], "recovered", detail)
        return self.get(fields["id"])

    def get(self, key: str) -> Job:
        """A job by id, or by name (case-insensitive)."""
        if "jobs" not in self.tables:
            raise KeyError(key)
        row = self.db.execute(
            f"SELECT * FROM jobs WHERE id = ? OR {self._NAME_IS} ORDER BY id = ? DESC LIMIT 1", (key, key, key)
        ).fetchone()
        if row is None:
            raise KeyError(key)
        return Job.from_row(row)

    def jobs(self, states: tuple[JobState, ...] = STATES) -> list[Job]:
        if "jobs" not in self.tables:  # an empty journal file, opened read-only
            return []
        marks = ",".join("?" * len(states))
        wanted = tuple(JobState(s).value for s in states)
        rows = self.db.execute(f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY created_at, id", wanted).fetchall()
        return [Job.from_row(r) for r in rows]

    def events(self, job_id: str) -> list[dict[str, Any]]:
        if "events" not in self.tables:
            return []
        rows = self.db.execute("SELECT at, who, what, detail FROM events WHERE job_id = ? ORDER BY seq", (job_id,)).fetchall()
        return [dict(r) for r in rows]

    def transition(
        self,
        job_id: str,
        to: JobState,
        *,
        expect: JobState | tuple[JobState, ...] | None = None,
        fence: int | None = None,
        **fields: Any,
    ) -> Job:
        """Move ``job_id`` to state ``to``, setting ``fields``; raises IllegalTransition when not allowed.

        ``expect`` narrows the states it may come from (the transition table allows the rest).
        ``fence`` (a run's outcome): the job must still be running under that fence, else LeaseLost.
        """
        now = time.time()
        with self.transaction():
            row = self.db.execute(f"SELECT state, fence FROM jobs WHERE id = ?{self._LOCK_ROW}", (job_id,)).fetchone()
            if row is None:
                raise KeyError(job_id)
            current, to = JobState(row["state"]), JobState(to)
            if fence is not None and (current is not JobState.RUNNING or row["fence"] != fence):
                raise LeaseLost(f"job {job_id}: no longer held under fence {fence} (now {current}, fence {row['fence']})")
            allowed = (expect,) if isinstance(expect, str) else expect
            if (current, to) not in TRANSITIONS or (allowed is not None and current not in allowed):
                raise IllegalTransition(f"job {job_id}: {current} -> {to} is not allowed")
            values = _columns(fields)
            if "delivery" in fields:
                values["delivered_at"] = None  # a new plan is pending until settled
            values["state"] = to.value
            values["updated_at"] = now
            if to is JobState.RUNNING:
                values["started_at"] = now
            else:
                values["lease_until"] = None
            if to in TERMINAL:
                values["finished_at"] = now
            sets = ", ".join(f"{k} = ?" for k in values)
            self.db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*values.values(), job_id))
            self._event(job_id, to.value, {k: v for k, v in fields.items() if k not in ("spec", "delivery", "outputs")} or None)
        return self.get(job_id)

    def claim_next(
        self,
        worker: str,
        now: float | None = None,
        choose: Callable[[list[Job]], Job] | None = None,
        eligible: Callable[[Job], bool] | None = None,
    ) -> Job | None:
        """Atomically take the next due queued job and mark it running: the first by priority, then
        age, or the one ``choose`` picks among the due jobs of the top priority (oldest first).
        ``eligible``: only jobs this worker can run count (a device group takes no LoRA job while a
        one-GPU worker can); the queue is read in pages of ``CHOICES`` until one is found. None when
        no due job is eligible."""
        now = time.time() if now is None else now
        limit = CHOICES if choose is not None or eligible is not None else 1
        with self.transaction():
            jobs: list[Job] = []
            offset = 0
            while not jobs:
                rows = self.db.execute(
                    "SELECT * FROM jobs WHERE state = 'queued' AND next_attempt_at <= ? AND cancel_requested = 0"
                    " AND (delivery IS NULL OR delivered_at IS NOT NULL)"
                    f" ORDER BY priority DESC, created_at, id LIMIT ? OFFSET ?{self._SKIP_LOCKED}",
                    (now, limit, offset),
                ).fetchall()
                jobs = [j for j in map(Job.from_row, rows) if eligible is None or eligible(j)]
                if len(rows) < limit:
                    break
                offset += limit
            if not jobs:
                return None
            candidates = [j for j in jobs if j.priority == jobs[0].priority]
            job = choose(candidates) if choose is not None and len(candidates) > 1 else candidates[0]
            self.db.execute(
                "UPDATE jobs SET state = 'running', worker = ?, started_at = ?, updated_at = ?, progress = NULL,"
                " host = ?, lease_until = ?, fence = fence + 1 WHERE id = ? AND state = 'queued'",
                (worker, now, now, self.host, now + self.lease_s, job.id),
            )
            self._event(job.id, "running", {"worker": worker})
        return self.get(job.id)

    # --- leases (several hosts) ------------------------------------------------------------------

    def renew(self, held: list[tuple[str, int]], now: float | None = None) -> list[str]:
        """Extend the leases of the runs this host holds (job id, fence) and of its claims in flight;
        returns the ids whose lease is lost (expired and requeued, or taken by another host)."""
        now = time.time() if now is None else now
        lost = []
        with self.transaction():
            for job_id, fence in held:
                if not self.db.execute(
                    "UPDATE jobs SET lease_until = ? WHERE id = ? AND fence = ? AND state = 'running'",
                    (now + self.lease_s, job_id, fence),
                ).rowcount:
                    lost.append(job_id)
            self.db.execute("UPDATE claims SET lease_until = ? WHERE host = ?", (now + self.lease_s, self.host))
        return lost

    def holds(self, job_id: str, fence: int) -> bool:
        """The job is still running under ``fence`` (this host's run of it has not lost its lease)."""
        row = self.db.execute("SELECT 1 FROM jobs WHERE id = ? AND fence = ? AND state = 'running'", (job_id, fence)).fetchone()
        return row is not None

    def expire_leases(self, now: float | None = None) -> list[Job]:
        """Runs whose host stopped renewing (dead, stalled, cut off): queued again at once, to resume
        from their last checkpoint on whichever host takes them. Counted in ``attempts`` only."""
        now = time.time() if now is None else now
        requeued = []
        expired = self.db.execute(
            "SELECT id, fence, host FROM jobs WHERE state = 'running' AND lease_until IS NOT NULL AND lease_until < ?", (now,)
        ).fetchall()
        for row in expired:
            why = ErrorRecord("interrupted", f"the host {row['host']} stopped renewing its lease while the job ran")
            with contextlib.suppress(IllegalTransition):  # renewed or moved on since the read
                with self.transaction():
                    current = self.db.execute(
                        f"SELECT attempts, lease_until FROM jobs WHERE id = ? AND fence = ? AND state = 'running'{self._LOCK_ROW}",
                        (row["id"], row["fence"]),
                    ).fetchone()
                    if current is None or current["lease_until"] is None or current["lease_until"] >= now:
                        raise IllegalTransition("renewed")
                    self.db.execute(
                        "UPDATE jobs SET state = 'queued', worker = NULL, lease_until = NULL, next_attempt_at = 0,"
                        " attempts = attempts + 1, error = ?, updated_at = ? WHERE id = ?",
                        (_dump(why), now, row["id"]),
                    )
                    self._event(row["id"], "queued", {"lease_expired": row["host"], "fence": row["fence"]})
                requeued.append(self.get(row["id"]))
        return requeued

    @contextlib.contextmanager
    def delivery_lock(self, job_id: str) -> Iterator[bool]:
        """Whether this process may carry out ``job_id``'s delivery now. One daemon per SQLite
        journal (the root lock): always."""
        yield True

    def next_due_at(self) -> float | None:
        row = self.db.execute("SELECT MIN(next_attempt_at) FROM jobs WHERE state = 'queued' AND cancel_requested = 0").fetchone()
        return row[0]

    def set_progress(self, job_id: str, progress: dict[str, Any], fence: int | None = None) -> None:
        fenced = "" if fence is None else " AND fence = ?"
        self.db.execute(
            f"UPDATE jobs SET progress = ?, updated_at = ? WHERE id = ? AND state = 'running'{fenced}",
            (_dump(progress), time.time(), job_id, *(() if fence is None else (fence,))),
        )

    def set_priority(self, job_id: str, priority: int) -> Job:
        """A queued job's priority (higher runs first); a job that left the queue keeps its own."""
        with self.transaction():
            cur = self.db.execute(
                "UPDATE jobs SET priority = ?, updated_at = ? WHERE id = ? AND state = 'queued'", (priority, time.time(), job_id)
            )
            if cur.rowcount:
                self._event(job_id, "priority", priority)
        return self.get(job_id)

    def request_cancel(self, job_id: str) -> Job:
        """Queued: cancelled at once. Running: flagged; the worker stops at the next step."""
        with self.transaction():
            self.db.execute("UPDATE jobs SET cancel_requested = 1, updated_at = ? WHERE id = ?", (time.time(), job_id))
            self._event(job_id, "cancel requested")
        return self.get(job_id)

    def set_delivery(self, job_id: str, delivery: DeliveryPlan) -> None:
        with self.transaction():
            self.db.execute("UPDATE jobs SET delivery = ? WHERE id = ? AND delivered_at IS NULL", (_dump(delivery), job_id))

    def pending_moves(self) -> list[Job]:
        """Jobs whose recorded file moves (delivery, or a retry's way back) are not all done."""
        rows = self.db.execute(
            "SELECT * FROM jobs WHERE delivery IS NOT NULL AND delivered_at IS NULL ORDER BY updated_at"
        ).fetchall()
        return [Job.from_row(r) for r in rows]

    def mark_delivered(self, job_id: str, detail: Any = None, inputs: list[dict[str, Any]] | None = None) -> None:
        """The recorded moves are done; ``inputs``, when given, replaces the recorded inputs (rehashed
        after a retry brought them back from failed/)."""
        with self.transaction():
            self.db.execute("UPDATE jobs SET delivered_at = ? WHERE id = ?", (time.time(), job_id))
            if inputs is not None:
                self.db.execute("UPDATE jobs SET inputs = ? WHERE id = ?", (_dump(inputs), job_id))
            self._event(job_id, "delivered", detail)

    # --- what status shows besides jobs ---------------------------------------------------------

    def set_waiting(self, drops: list[dict[str, Any]]) -> None:
        """Replace the list of drops waiting in the inbox (each with its ``sidecar`` path)."""
        with self.transaction():
            self.db.execute("DELETE FROM waiting")
            self.db.executemany(
                "INSERT INTO waiting (sidecar, detail) VALUES (?, ?) ON CONFLICT (sidecar) DO UPDATE SET detail = excluded.detail",
                [(d["sidecar"], _dump(d)) for d in drops],
            )

    def waiting(self) -> list[dict[str, Any]]:
        if "waiting" not in self.tables:  # a schema-1 journal, opened read-only
            return []
        return [json.loads(r[0]) for r in self.db.execute("SELECT detail FROM waiting ORDER BY sidecar")]

    def set_daemon(self, key: str, value: Any) -> None:
        """The daemon's own state under ``key`` (``workers``: each device's worker and its trouble)."""
        with self.transaction():
            self.db.execute(
                "INSERT INTO daemon (key, value, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                (key, _dump(value), time.time()),
            )

    def daemon_state(self) -> dict[str, Any]:
        if "daemon" not in self.tables:
            return {}
        rows = self.db.execute("SELECT key, value FROM daemon").fetchall()
        return {r["key"]: None if r["value"] is None else json.loads(r["value"]) for r in rows}
