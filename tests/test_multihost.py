"""Several hosts on one shared root and one PostgreSQL journal: real ``fploopd run`` processes with
different host names, a real throwaway PostgreSQL server (tests/pg_util.py), real SIGKILL, SIGSTOP
and a server restart. Each scenario ends with a full inventory: every input byte-identical in
exactly one place, every job's outputs once in outbox/, the journal consistent with the folders."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pg_util
import pytest
from daemon_util import (
    SMALL,
    Daemon,
    assert_each_input_once,
    drop,
    env,
    image_bytes,
    jobs,
    make_root,
    outbox_jobs,
    status_is_true,
    wait_for,
)

from fploopd.daemon.journal import ClaimTaken, JobState
from fploopd.daemon.pgjournal import PgJournal

LEASE_S = 3.0


@pytest.fixture
def shared_root(tmp_path: Path, pg_server: pg_util.PgServer) -> tuple[Path, str]:
    url = pg_server.new_database()
    return make_root(tmp_path, journal=url, lease_s=LEASE_S), url


def hosts(root: Path, names: str, **extra: str) -> dict[str, Daemon]:
    return {h: Daemon(root, "--host", h, environ=env(**extra), log_dir=root.parent) for h in names}


def ready(url: str, names: str) -> bool:
    """Every named host's worker has its models loaded (so a burst reaches all of them)."""
    rows = pg_util.rows(url, "SELECT key, value FROM daemon WHERE key LIKE 'workers@%'") if _has_schema(url) else []
    states = {r["key"].split("@", 1)[1]: r["value"] for r in rows}
    return all(h in states and '"ready"' in states[h] for h in names)


def _has_schema(url: str) -> bool:
    return bool(pg_util.rows(url, "SELECT to_regclass('daemon') IS NOT NULL AS there")[0]["there"])


def events(url: str, job_id: str) -> list[dict[str, Any]]:
    return pg_util.rows(url, f"SELECT who, what, detail FROM events WHERE job_id = '{job_id}' ORDER BY seq")


def all_delivered(root: Path, count: int) -> bool:
    rows = jobs(root)
    return len(rows) == count and all(r["state"] == "done" and r["delivered_at"] for r in rows)


def stop_all(daemons: dict[str, Daemon]) -> None:
    for d in daemons.values():
        if d.proc.poll() is None:
            os.killpg(d.proc.pid, signal.SIGCONT)  # a stopped one must hear the SIGTERM
            d.signal(signal.SIGTERM)
    for d in daemons.values():
        d.wait(60)


def inventory(root: Path, dropped: dict[str, bytes], names: list[str]) -> None:
    """Inputs once each (in archive/), outputs once each (outbox/), status true to the folders."""
    where = assert_each_input_once(root, dropped)
    assert all(p.startswith("archive/") for p in where.values()), where
    assert outbox_jobs(root) == sorted(names)
    for name in names:
        videos = [p for p in (root / "outbox" / name).iterdir() if p.suffix == ".mp4"]
        assert videos and (root / "outbox" / name / "manifest.json").is_file()
    views = status_is_true(root)
    assert sorted(v["name"] for v in views) == sorted(names) and all(v["state"] == "done" for v in views)
    assert not [p for p in (root / ".fploopd" / "work").iterdir() if (p / "out").exists() or (p / "inputs").exists()]


def test_three_hosts_share_a_burst_each_job_delivered_once(shared_root: tuple[Path, str]) -> None:
    root, url = shared_root
    daemons = hosts(root, "abc")
    try:
        wait_for(lambda: ready(url, "abc"), 180, "three hosts ready")
        dropped: dict[str, bytes] = {}
        names = [f"burst{i}" for i in range(6)]
        for i, name in enumerate(names):
            dropped |= drop(root, name, {"prompt": "", **SMALL}, media=image_bytes(i))
        wait_for(lambda: all_delivered(root, 6), 300, "six jobs delivered")
    finally:
        stop_all(daemons)
    ran_on = {r["host"] for r in jobs(root)}
    assert ran_on <= set("abc") and len(ran_on) >= 2, ran_on  # the work spread over the hosts
    assert all(r["attempts"] == 0 and r["fence"] == 1 for r in jobs(root))  # each claimed once
    inventory(root, dropped, names)


def _running_with_a_checkpoint(root: Path) -> dict[str, Any] | None:
    for r in jobs(root):
        if r["state"] == "running" and ((r["progress"] or {}).get("section") or 0) >= 2:
            return r
    return None


def test_a_killed_host_s_job_is_resumed_elsewhere_after_its_lease(shared_root: tuple[Path, str]) -> None:
    root, url = shared_root
    daemons = hosts(root, "ab", FPLOOPD_TEST_STEP_DELAY_S="0.3")
    try:
        wait_for(lambda: ready(url, "ab"), 180, "two hosts ready")
        dropped = drop(root, "long", {"prompt": "", **SMALL, "main_sections": 3}, media=image_bytes(3))
        job = wait_for(lambda: _running_with_a_checkpoint(root), 180, "a job past its first section")
        victim, other = daemons[job["host"]], daemons["b" if job["host"] == "a" else "a"]
        victim.kill_group()  # the host dies: no stop, no journal write
        wait_for(lambda: all_delivered(root, 1), 240, "the job delivered by the other host")
    finally:
        stop_all(daemons)
    (row,) = jobs(root)
    assert row["host"] != job["host"] and row["fence"] == 2 and row["attempts"] == 1
    assert any(e["what"] == "queued" and "lease_expired" in (e["detail"] or "") for e in events(url, row["id"]))
    assert "resuming after section" in other.output()  # from the checkpoint in the shared work dir
    inventory(root, dropped, ["long"])


def test_a_stalled_host_never_delivers_its_late_result(shared_root: tuple[Path, str]) -> None:
    root, url = shared_root
    daemons = hosts(root, "ab", FPLOOPD_TEST_STEP_DELAY_S="0.3")
    try:
        wait_for(lambda: ready(url, "ab"), 180, "two hosts ready")
        dropped = drop(root, "stall", {"prompt": "", **SMALL, "main_sections": 3}, media=image_bytes(4))
        job = wait_for(lambda: _running_with_a_checkpoint(root), 180, "a job past its first section")
        stalled = daemons[job["host"]]
        os.killpg(stalled.proc.pid, signal.SIGSTOP)  # the whole host freezes, past its lease
        wait_for(lambda: all_delivered(root, 1), 240, "the job delivered by the other host")
        os.killpg(stalled.proc.pid, signal.SIGCONT)
        wait_for(lambda: "lost its lease" in stalled.output() or "late result" in stalled.output(), 60, "the stalled host to notice")
        wait_for(
            lambda: any(e["what"] == "late result discarded" for e in events(url, job["id"])) or "went away" in stalled.output(),
            120,
            "the late result discarded",
        )
    finally:
        stop_all(daemons)
    (row,) = jobs(root)
    assert row["state"] == "done" and row["host"] != job["host"]
    delivered = [e for e in events(url, row["id"]) if e["what"] == "delivered"]
    assert len(delivered) == 1  # once, by the host that held the lease
    inventory(root, dropped, ["stall"])


def test_postgresql_restarted_mid_run_loses_nothing(shared_root: tuple[Path, str], pg_server: pg_util.PgServer) -> None:
    root, url = shared_root
    daemons = hosts(root, "ab", FPLOOPD_TEST_STEP_DELAY_S="0.1")
    try:
        wait_for(lambda: ready(url, "ab"), 180, "two hosts ready")
        dropped: dict[str, bytes] = {}
        names = [f"restart{i}" for i in range(4)]
        for i, name in enumerate(names):
            dropped |= drop(root, name, {"prompt": "", **SMALL}, media=image_bytes(10 + i))
        wait_for(lambda: any(r["state"] == "running" for r in jobs(root)), 180, "a job running")
        pg_server.stop("fast")  # every connection is cut
        wait_for(lambda: all("journal database" in d.output() for d in daemons.values()), 60, "both hosts to notice")
        pg_server.start()
        wait_for(lambda: all_delivered(root, 4), 300, "four jobs delivered")
        assert all(d.proc.poll() is None for d in daemons.values())  # the hosts went on
    finally:
        stop_all(daemons)
    inventory(root, dropped, names)


def test_the_same_drop_seen_by_three_intakes_is_one_job(shared_root: tuple[Path, str]) -> None:
    root, url = shared_root
    daemons = hosts(root, "abc")
    try:
        wait_for(lambda: ready(url, "abc"), 180, "three hosts ready")
        dropped = drop(root, "once", {"prompt": "", **SMALL}, media=image_bytes(7))
        wait_for(lambda: all_delivered(root, 1), 180, "the job delivered")
    finally:
        stop_all(daemons)
    assert len(jobs(root)) == 1
    inventory(root, dropped, ["once"])


def test_a_drop_is_claimed_in_the_journal_once(pg_server: pg_util.PgServer) -> None:
    """The claim's key is the sidecar: a second host's claim of the same drop is refused before any
    file moves, and a job name taken by a claim in flight is not given twice."""
    url = pg_server.new_database()
    one, two = PgJournal(url, "t", host="a"), PgJournal(url, "t", host="b")
    record = {"moves": [{"field": "sidecar", "src": "inbox/loop/x.json", "dst": ".fploopd/work/1/inputs/x.json"}]}
    one.open_claim("1", "x", record)
    with pytest.raises(ClaimTaken):
        two.open_claim("2", "x-2", record)
    assert two.name_taken("X")  # case-insensitive, as on SQLite
    one.close_claim("1", name="x", pipeline="loop", spec={"prompt": ""}, seeds=[1], inputs=[])
    job = two.claim_next("b:1:cpu")
    assert job is not None and (job.host, job.fence, job.state) == ("b", 1, JobState.RUNNING)
    assert one.claim_next("a:1:cpu") is None  # nothing else queued
    one.close()
    two.close()
