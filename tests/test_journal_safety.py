"""The journal is precious: a lost, damaged or locked journal stops the daemon with a clear message,
`fploopd journal recover` rebuilds what the folders hold, and looking (status) never writes."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from daemon_util import (
    PY,
    SMALL,
    drop,
    env,
    fploopd,
    image_bytes,
    make_root,
    outbox_jobs,
    run_once,
    status,
    status_is_true,
)

from fploopd.daemon.journal import Journal, JournalError
from fploopd.daemon.layout import Layout
from fploopd.daemon.recover import check_root_journal, recover_journal

NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]  # root that permission bits stop


def journal_files(root: Path) -> list[Path]:
    state = root / ".fploopd"
    return [state / f"journal.sqlite3{s}" for s in ("", "-wal", "-shm") if (state / f"journal.sqlite3{s}").exists()]


def add_job(journal: Journal, job_id: str, name: str) -> None:
    journal.open_claim(job_id, name, {"moves": []})
    journal.close_claim(job_id, name=name, pipeline="loop", spec={"prompt": ""}, seeds=[1], inputs=[])


# --- a lost journal -------------------------------------------------------------------------------


def test_a_lost_journal_stops_the_daemon_and_recover_rebuilds_the_jobs(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    drop(root, "good", media=image_bytes())
    drop(root, "bad", {"prompt": "", "promt": "typo", **SMALL}, media=image_bytes(2))  # the input's fault
    first = run_once(root)
    assert first.returncode == 0, first.stderr
    before = {v["name"]: v for v in status_is_true(root)}
    assert {n: v["state"] for n, v in before.items()} == {"good": "done", "bad": "failed"}

    for lose in ("zeroed", "deleted"):
        if lose == "zeroed":
            for f in journal_files(root):
                f.write_bytes(b"")
        else:
            for f in journal_files(root):
                f.unlink()
        refused = run_once(root)
        assert refused.returncode == 2, refused.stderr
        assert "fploopd journal recover --root" in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
        assert not journal_files(root) or all(f.stat().st_size == 0 for f in journal_files(root))  # nothing started

    recovered = fploopd("journal", "recover", root=root)
    assert recovered.returncode == 0, recovered.stderr
    assert "1 done, 1 failed, 0 cancelled recovered" in recovered.stdout
    after = {v["name"]: v for v in status_is_true(root)}
    assert set(after) == {"good", "bad"}
    for name, v in after.items():
        for key in ("id", "state", "pipeline", "seeds", "outputs", "location", "attempts"):
            if name == "bad" and key in ("pipeline", "seeds"):
                continue  # error.json does not say them
            assert v[key] == before[name][key], (name, key, v[key], before[name][key])
    assert after["bad"]["error"]["kind"] == "input" and "promt" in after["bad"]["error"]["error"]

    drop(root, "again", media=image_bytes(3))  # the rebuilt journal takes new work
    again = run_once(root)
    assert again.returncode == 0, again.stderr
    assert outbox_jobs(root) == ["again", "good"], (status(root), again.stderr[-6000:])
    assert {v["name"]: v["state"] for v in status(root)} == {"good": "done", "bad": "failed", "again": "done"}


def test_a_fresh_root_needs_no_journal(tmp_path: Path) -> None:
    layout = Layout(make_root(tmp_path))
    check_root_journal(layout)  # nothing there: starts as before
    (layout.work / "abc").mkdir(parents=True)
    with pytest.raises(JournalError, match="journal recover"):
        check_root_journal(layout)


def test_recover_reads_cancelled_jobs_renamed_folders_and_keeps_a_broken_journal(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    layout = Layout(root)
    gone = layout.failed / "gone"  # a cancelled job, whose user had a file called error.json
    gone.mkdir()
    (gone / "gone.json").write_text('{"prompt": ""}')
    (gone / "error.json").write_text("the user's own file")
    (gone / "fploopd-error.json").write_text(
        json.dumps({"job": "j1", "kind": "cancelled", "error": "cancelled by the user"})
    )
    twin = layout.failed / "cat-j2"  # failed/cat was taken when j2 failed
    twin.mkdir()
    (twin / "cat.png").write_bytes(image_bytes())
    (twin / "error.json").write_text(json.dumps({"job": "j2", "kind": "input", "error": "bad", "field": "seed"}))
    (layout.failed / "cat").mkdir()  # a user's folder: no error.json, skipped
    layout.journal.parent.mkdir(parents=True, exist_ok=True)
    layout.journal.write_bytes(os.urandom(8192))
    damaged = layout.journal.read_bytes()

    result = recover_journal(layout)
    assert (result.done, result.failed, result.cancelled) == (0, 1, 1)
    (aside,) = result.moved_aside
    assert Path(aside).read_bytes() == damaged and Path(aside).name.startswith("journal.sqlite3.broken-")
    journal = Journal.open_readonly(layout.journal, "test")
    jobs = {j.id: j for j in journal.jobs()}
    assert jobs["j1"].state == "cancelled" and jobs["j1"].name == "gone"
    assert sorted(i["name"] for i in jobs["j1"].inputs) == ["error.json", "gone.json"]
    assert jobs["j2"].state == "failed" and jobs["j2"].name == "cat" and jobs["j2"].error.field == "seed"
    png = hashlib.sha256(image_bytes()).hexdigest()
    assert jobs["j2"].inputs == [{"field": "media", "name": "cat.png", "size": len(image_bytes()), "sha256": png}]
    assert all(j.delivered_at is not None for j in jobs.values())
    journal.close()
    again = recover_journal(layout)  # a healthy journal is kept: only jobs it does not know are added
    assert (again.done, again.failed, again.cancelled, again.moved_aside) == (0, 0, 0, [])


def test_recover_takes_unreadable_files_and_fifos_in_failed_as_they_are(tmp_path: Path) -> None:
    """A file the daemon's user cannot read, and a FIFO (a hostile drop), in a failed/ folder: recover
    records them without hashing them, and neither blocks nor stops it."""
    root = make_root(tmp_path)
    odd = Layout(root).failed / "odd"
    odd.mkdir()
    (odd / "error.json").write_text(json.dumps({"job": "j3", "kind": "input", "error": "bad"}))
    os.mkfifo(odd / "odd.json")
    (odd / "odd.png").write_bytes(image_bytes())
    (odd / "odd.png").chmod(0)
    result = subprocess.run(
        [*NO_DAC, PY, "-m", "fploopd", "journal", "recover", "--root", str(root)],
        capture_output=True, text=True, env=env(), timeout=60, check=False,
    )
    assert result.returncode == 0 and "0 done, 1 failed" in result.stdout, result.stderr[-3000:]
    journal = Journal.open_readonly(Layout(root).journal, "test")
    (job,) = journal.jobs()
    inputs = {i["name"]: i for i in job.inputs}
    journal.close()
    assert "sha256" not in inputs["odd.json"] and "unreadable" in inputs["odd.png"], inputs


# --- damaged and locked journals -------------------------------------------------------------------


def damage_by_truncation(path: Path) -> None:
    journal = Journal(path, "test")
    for i in range(200):
        add_job(journal, f"id{i}", f"name{i}")
    journal.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    journal.close()
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


@pytest.mark.parametrize("damage", ["random bytes", "truncated"])
def test_a_damaged_journal_is_a_clear_error_not_a_traceback(tmp_path: Path, damage: str) -> None:
    root = make_root(tmp_path)
    path = Layout(root).journal
    path.parent.mkdir(parents=True, exist_ok=True)
    if damage == "random bytes":
        path.write_bytes(os.urandom(64 * 1024))
    else:
        damage_by_truncation(path)
    with pytest.raises(JournalError, match="damaged") as err:
        Journal(path, "supervisor", check=True)
    assert str(path) in err.value.message and "journal recover" in err.value.message
    refused = run_once(root)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert f"the journal {path} is damaged" in refused.stderr and "journal recover" in refused.stderr


def test_a_locked_journal_is_reported_after_a_short_wait(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    path = Layout(root).journal
    Journal(path, "test").close()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # e.g. a browser left open on it
    try:
        with pytest.raises(JournalError, match="locked by another process"):
            Journal(path, "supervisor", check=True)
        # A 30 s wait would run into this timeout; the open gives up after a few seconds.
        refused = fploopd("run", "--once", root=root, timeout=25)
        assert refused.returncode == 2 and "locked by another process" in refused.stderr, refused.stderr
    finally:
        other.execute("ROLLBACK")
        other.close()
    journal = Journal(path, "supervisor", check=True)
    assert journal.db.execute("PRAGMA busy_timeout").fetchone()[0] == 30000  # operation waits as before
    journal.close()


# --- looking without writing ---------------------------------------------------------------------


def test_read_only_opening_sees_a_live_wal_journal(tmp_path: Path) -> None:
    path = tmp_path / ".fploopd" / "journal.sqlite3"
    writer = Journal(path, "supervisor")
    add_job(writer, "a", "cat")
    reader = Journal.open_readonly(path, "status")
    assert [(j.id, j.state) for j in reader.jobs()] == [("a", "queued")]
    writer.claim_next("w")  # committed to the -wal file only
    assert Path(f"{path}-wal").stat().st_size > 0
    assert reader.get("cat").state == "running"
    with pytest.raises(sqlite3.OperationalError):
        reader.db.execute("DELETE FROM jobs")
    reader.close()
    writer.close()


V1_SCHEMA = """
CREATE TABLE jobs (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE COLLATE NOCASE, pipeline TEXT, spec TEXT,
    seeds TEXT, inputs TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0, priority INTEGER NOT NULL DEFAULT 0, progress TEXT, error TEXT,
    outputs TEXT, cancel_requested INTEGER NOT NULL DEFAULT 0, delivery TEXT, delivered_at REAL, worker TEXT,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, started_at REAL, finished_at REAL);
CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT, at REAL NOT NULL, who TEXT NOT NULL,
    what TEXT NOT NULL, detail TEXT);
CREATE TABLE claims (job_id TEXT PRIMARY KEY, name TEXT NOT NULL COLLATE NOCASE, record TEXT NOT NULL,
    created_at REAL NOT NULL);
INSERT INTO jobs (id, name, inputs, state, created_at, updated_at) VALUES ('a', 'cat', '[]', 'done', 1, 2);
PRAGMA user_version = 1;
"""


def test_read_only_opening_reads_a_schema_1_journal_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / ".fploopd" / "journal.sqlite3"
    path.parent.mkdir()
    old = sqlite3.connect(path)
    old.executescript(V1_SCHEMA)
    old.close()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    journal = Journal.open_readonly(path, "status")
    (job,) = journal.jobs()
    assert (job.id, job.state, job.failures) == ("a", "done", 0)
    assert journal.waiting() == [] and journal.daemon_state() == {}
    journal.close()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in path.parent.iterdir()) == ["journal.sqlite3"]


def test_read_only_opening_works_where_nothing_can_be_written(tmp_path: Path) -> None:
    """As on a full disk: the journal's folder and file cannot be written (no -wal or -shm can be made)."""
    path = tmp_path / ".fploopd" / "journal.sqlite3"
    journal = Journal(path, "supervisor")
    add_job(journal, "a", "cat")
    journal.close()  # the last connection folds the -wal back and removes it
    path.chmod(0o444)
    path.parent.chmod(0o555)
    look = (
        "from pathlib import Path; from fploopd.daemon.journal import Journal; import sys\n"
        "print([j.name for j in Journal.open_readonly(Path(sys.argv[1]), 'status').jobs()])"
    )
    try:
        cannot = subprocess.run(
            [
                *NO_DAC,
                PY,
                "-c",
                "import sqlite3, sys; sqlite3.connect(sys.argv[1]).execute('PRAGMA user_version = 3')",
                str(path),
            ],
            capture_output=True,
            text=True,
            env=env(),
            check=False,
        )
        assert cannot.returncode != 0 and "readonly" in cannot.stderr  # the test is real: nothing may be written
        seen = subprocess.run(
            [*NO_DAC, PY, "-c", look, str(path)], capture_output=True, text=True, env=env(), check=False
        )
        assert seen.returncode == 0 and seen.stdout.strip() == "['cat']", seen.stderr
    finally:
        path.parent.chmod(0o755)
        path.chmod(0o644)
