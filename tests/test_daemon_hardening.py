"""The daemon under trouble that is nobody's input: workers that die, freeze or leave, a daemon
killed again and again, retries of fixed and cancelled jobs, missing weights, a spec it cannot
read, a full disk, and a root owned by a user while the daemon runs as root. Real processes, real
signals, the tiny model on the CPU."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
from pathlib import Path

import pytest
from daemon_util import (
    SMALL,
    Daemon,
    assert_each_input_once,
    drop,
    env,
    fploopd,
    image_bytes,
    jobs,
    make_root,
    outbox_jobs,
    run_once,
    status,
    status_is_true,
    tmpfs,
    wait_for,
)
from safetensors.torch import load

FAST = {**SMALL, "steps": 2}


def _view(root: Path, name: str) -> dict:
    (view,) = [v for v in status(root) if v["name"] == name]
    return view


def test_a_job_that_breaks_its_worker_costs_the_job_behind_it_nothing(tmp_path: Path) -> None:
    root = make_root(tmp_path, max_attempts=1)
    dropped = drop(root, "a", {"prompt": "", **FAST, "priority": 5}, media=image_bytes(1))
    dropped.update(drop(root, "b", {"prompt": "", **FAST}, media=image_bytes(2)))
    result = run_once(root, env(FPLOOPD_TEST_FAIL_AT="run:a"))  # an unexpected error: the worker is replaced
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = _view(root, "a"), _view(root, "b")
    assert a["state"] == "failed" and "TestFailure" in a["error"]["error"] and a["attempts"] == 1
    assert b["state"] == "done" and b["attempts"] == 0 and b["error"] is None, b
    assert outbox_jobs(root) == ["b"]
    assert_each_input_once(root, dropped)


def test_sigterm_to_the_worker_alone_stops_it_warm_and_nothing_is_charged_to_the_next_job(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    drop(root, "a", {"prompt": "", **FAST, "steps": 4, "priority": 5}, media=image_bytes(1))
    drop(root, "b", {"prompt": "", **FAST}, media=image_bytes(2))
    daemon = Daemon(root, environ=env(FPLOOPD_TEST_STEP_DELAY_S="0.3"))
    try:
        wait_for(lambda: [j for j in jobs(root) if j["name"] == "a" and j["state"] == "running" and (j["progress"] or {}).get("step")], 90, "a running")
        daemon.worker().send_signal(signal.SIGTERM)
        wait_for(lambda: outbox_jobs(root) == ["a", "b"], 120, "both delivered by a new worker")
    finally:
        assert daemon.stop() == 0
    views = {v["name"]: v for v in status_is_true(root)}
    assert views["a"]["attempts"] == 1 and views["a"]["failures"] == 0  # interrupted once, never failed
    assert views["b"]["attempts"] == 0 and views["b"]["failures"] == 0


def test_kills_of_the_daemon_never_exhaust_a_job(tmp_path: Path) -> None:
    root = make_root(tmp_path, max_attempts=2)
    dropped = drop(root, "cat", {"prompt": "", **FAST, "seed": 4}, media=image_bytes())
    for _ in range(3):  # more interruptions than max_attempts: a power cut is not the job's fault
        crashed = run_once(root, env(FPLOOPD_TEST_CRASH_AT="run:section2"))
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    assert run_once(root).returncode == 0
    view = _view(root, "cat")
    assert view["state"] == "done" and view["attempts"] == 3 and view["failures"] == 0
    assert json.loads((root / "outbox" / "cat" / "manifest.json").read_text())["attempts"] == 3
    assert_each_input_once(root, dropped)


def test_retry_after_fixing_the_input_records_the_file_that_was_used(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    drop(root, "pic", {"prompt": "", **FAST}, media=b"this is not a PNG")
    assert run_once(root).returncode == 0
    assert _view(root, "pic")["state"] == "failed"
    good = image_bytes(3)
    (root / "failed" / "pic" / "pic.png").write_bytes(good)  # the user fixes the file in failed/
    assert fploopd("retry", "pic", root=root).returncode == 0
    assert run_once(root).returncode == 0
    view = _view(root, "pic")
    assert view["state"] == "done" and view["attempts"] == 1
    manifest = json.loads((root / "outbox" / "pic" / "manifest.json").read_text())
    (used,) = [i for i in manifest["inputs"] if i["name"] == "pic.png"]
    assert used["sha256"] == hashlib.sha256(good).hexdigest() and used["size"] == len(good)
    assert (root / "archive" / "pic" / "pic.png").read_bytes() == good


def test_a_cancelled_job_can_be_retried_and_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    spec = {"prompt": "", **FAST, "steps": 3, "main_sections": 3, "seed": 11, "decode": False}
    drop(root, "c", spec, media=image_bytes(4))
    daemon = Daemon(root, environ=env(FPLOOPD_TEST_STEP_DELAY_S="0.3"))
    try:
        wait_for(lambda: [j for j in jobs(root) if (j["progress"] or {}).get("section", 0) >= 2], 90, "section 2 running")
        assert fploopd("cancel", "c", root=root).returncode == 0
        wait_for(lambda: [j for j in jobs(root) if j["state"] == "cancelled" and j["delivered_at"]], 60, "the cancel")
    finally:
        assert daemon.stop() == 0
    (job,) = jobs(root)
    assert any((root / ".fploopd" / "work" / job["id"] / "state").iterdir())  # its checkpoint is kept
    assert fploopd("retry", "c", root=root).returncode == 0
    resumed = run_once(root)
    assert resumed.returncode == 0 and "resuming after section" in resumed.stderr, resumed.stderr[-3000:]
    assert _view(root, "c")["state"] == "done"
    # The same drop run straight through gives the same latents.
    drop(root, "straight", spec, media=image_bytes(4))
    assert run_once(root).returncode == 0
    ours = (root / "outbox" / "c" / "c_11_latent.safetensors").read_bytes()
    straight = (root / "outbox" / "straight" / "straight_11_latent.safetensors").read_bytes()
    a, b = load(ours), load(straight)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_a_frozen_worker_is_reported_then_replaced(tmp_path: Path) -> None:
    root = make_root(tmp_path, worker_silent_s=5.0, worker_restart_s=10.0)
    drop(root, "f", {"prompt": "", **FAST, "steps": 4}, media=image_bytes(5))
    daemon = Daemon(root, environ=env(FPLOOPD_TEST_STEP_DELAY_S="0.3"))
    try:
        wait_for(lambda: [j for j in jobs(root) if j["state"] == "running" and (j["progress"] or {}).get("step")], 90, "a running job")
        frozen = daemon.worker()
        frozen.send_signal(signal.SIGSTOP)
        wait_for(lambda: "not responding" in fploopd("status", root=root).stdout, 30, "status to say so")
        assert "has not responded for" in daemon.output()
        wait_for(lambda: outbox_jobs(root) == ["f"], 120, "the job done by a new worker")
        assert not frozen.is_running() or frozen.status() == "zombie"
    finally:
        assert daemon.stop() == 0
    view = _view(root, "f")
    assert view["attempts"] == 1 and view["failures"] == 1 and view["state"] == "done"


def test_a_spec_this_version_cannot_read_fails_the_job_without_restarting_the_worker(tmp_path: Path) -> None:
    root = make_root(tmp_path, journal="")  # edits the SQLite file itself
    drop(root, "old", {"prompt": "", **FAST}, media=image_bytes(6))
    drop(root, "new", {"prompt": "", **FAST, "priority": -1}, media=image_bytes(7))
    daemon = Daemon(root, "--model", "/nonexistent-weights")  # claims the drops; no worker can run them
    try:
        wait_for(lambda: len([j for j in jobs(root) if j["state"] == "queued"]) == 2, 60, "both queued")
    finally:
        assert daemon.stop() == 0
    db = sqlite3.connect(root / ".fploopd" / "journal.sqlite3")
    spec = json.loads(db.execute("SELECT spec FROM jobs WHERE name = 'old'").fetchone()[0])
    db.execute("UPDATE jobs SET spec = ? WHERE name = 'old'", (json.dumps({**spec, "sharpness": 2}),))
    db.commit()
    db.close()
    result = run_once(root)
    assert result.returncode == 0, result.stderr[-3000:]
    old = _view(root, "old")
    assert old["state"] == "failed" and old["error"]["kind"] == "spec" and "sharpness" in old["error"]["error"]
    assert old["attempts"] == 1 and _view(root, "new")["state"] == "done"
    assert "restarting the worker" not in result.stderr


def test_the_supervisor_hands_the_worker_a_model_and_turns_an_unreadable_spec_into_a_spec_error() -> None:
    from fploopd.daemon.supervisor import SpecError, recorded_spec
    from fploopd.spec import JobSpec

    assert isinstance(recorded_spec({"prompt": "", "image": "cat.png"}), JobSpec)
    with pytest.raises(SpecError) as caught:
        recorded_spec({"prompt": "", "image": "cat.png", "sharpness": 2})
    record = caught.value.record()
    assert record.kind == "spec" and "sharpness" in record.error and "drop the job again" in record.error


def test_missing_weights_are_said_at_start_and_shown_by_status(tmp_path: Path) -> None:
    root = make_root(tmp_path, model=str(tmp_path / "no-weights-here"))
    drop(root, "w", {"prompt": "", **FAST}, media=image_bytes(8))
    result = run_once(root)
    assert result.returncode == 1
    first_error = next(line for line in result.stderr.splitlines() if "ERROR" in line)
    assert "models cannot be loaded" in first_error  # said at start, before any job
    assert _view(root, "w")["state"] == "queued"
    daemon = Daemon(root)
    try:
        wait_for(lambda: "cannot load the models" in fploopd("status", root=root).stdout, 60, "status to show the load error")
        text = fploopd("status", root=root).stdout
        assert "no-weights-here" in text and "daemon: running" in text
    finally:
        assert daemon.stop() == 0
    assert "daemon: not running" in fploopd("status", root=root).stdout


def test_a_drop_waiting_for_its_media_is_listed_by_status(tmp_path: Path) -> None:
    root = make_root(tmp_path, grace_s=600.0)
    (root / "inbox" / "loop" / "later.json").write_text(json.dumps({"prompt": "", **FAST, "image": "later.png"}))
    daemon = Daemon(root)
    try:
        # First it settles, then it waits for its image: status follows.
        waiting = wait_for(
            lambda: [v for v in status(root) if v["state"] == "waiting" and "later.png" in v["waiting_for"]], 60, "the wait for later.png"
        )
        assert waiting[0]["name"] == "later" and waiting[0]["id"] is None and waiting[0]["pipeline"] == "loop"
        (root / "inbox" / "loop" / "later.png").write_bytes(image_bytes(9))
        wait_for(lambda: outbox_jobs(root) == ["later"], 90, "the delivery")
        assert [v["state"] for v in status(root)] == ["done"]
    finally:
        assert daemon.stop() == 0
    assert [v["state"] for v in status(root)] == ["done"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="the daemon must run as root to give files away")
def test_files_made_in_a_users_root_belong_to_that_user(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    uid, gid = 65534, 65534  # nobody
    for path in [root, *root.rglob("*")]:
        os.lchown(path, uid, gid)
    drop(root, "mine", {"prompt": "", **FAST, "seed": 1}, media=image_bytes(10))
    drop(root, "bad", {"promt": "", **FAST}, media=image_bytes(11))
    for path in (root / "inbox").rglob("*"):
        os.lchown(path, uid, gid)
    assert run_once(root).returncode == 0
    made = [root / "outbox" / "mine", *(root / "outbox" / "mine").iterdir(), root / "archive" / "mine", root / "failed" / "bad"]
    made.append(root / "failed" / "bad" / "error.json")
    assert {p.name: (p.stat().st_uid, p.stat().st_gid) for p in made} == {p.name: (uid, gid) for p in made}


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real 48 MiB file system (tmpfs) for the root; skipped where mounting is not allowed."""
    where = tmp_path / "disk"
    where.mkdir()
    with tmpfs(where, "48m"):
        yield where


def _fill(path: Path, leave_bytes: int) -> None:
    """Write ballast until only about ``leave_bytes`` are free."""
    free = shutil.disk_usage(path.parent).free
    with open(path, "wb") as f:
        chunk = b"\0" * (1 << 20)
        remaining = max(0, free - leave_bytes)
        try:
            while remaining > 0:
                remaining -= f.write(chunk[: min(len(chunk), remaining)])
        except OSError:
            pass  # full


def test_a_full_disk_pauses_the_daemon_and_it_resumes_when_space_returns(small_disk: Path) -> None:
    root = make_root(small_disk, min_free_mb=8)
    ballast = small_disk / "ballast"
    daemon = Daemon(root, log_dir=small_disk.parent)  # the test's log stays off the small disk
    try:
        wait_for(lambda: "watching" in daemon.output(), 60, "the daemon to start")
        _fill(ballast, 2 << 20)  # 2 MiB left: below the reserve
        dropped = drop(root, "held", {"prompt": "", **FAST}, media=image_bytes(12))
        wait_for(lambda: "intake and new jobs paused" in daemon.output(), 30, "the pause")
        held = wait_for(lambda: [v for v in status(root) if v["state"] == "waiting"], 30, "the held drop in status")
        assert "paused" in held[0]["waiting_for"] and jobs(root) == []
        _fill(small_disk / "ballast2", 0)  # now really full: the journal cannot be written either
        assert "paused" in fploopd("status", root=root).stdout  # status reads without writing
        assert daemon.proc.poll() is None
        ballast.unlink()
        (small_disk / "ballast2").unlink()
        wait_for(lambda: outbox_jobs(root) == ["held"], 120, "the delivery once space returned")
        assert "free again" in daemon.output()
    finally:
        assert daemon.stop() == 0
    assert_each_input_once(root, dropped)
    assert [v["state"] for v in status_is_true(root)] == ["done"]


def test_a_long_run_with_kills_delivers_the_good_and_fails_the_hostile(tmp_path: Path) -> None:
    """Hostile drops beside good ones, the daemon SIGKILLed twice mid-run and started again:
    every good job delivered once, every hostile drop failed with an error.json, nothing lost."""
    root = make_root(tmp_path)
    inbox = root / "inbox" / "loop"
    dropped: dict[str, bytes] = {}
    for i in range(4):
        dropped.update(drop(root, f"good{i}", {"prompt": "", **FAST, "steps": 4, "seed": i}, media=image_bytes(i)))
    hostile = {
        "deep.json": b"[" * 3000 + b"]" * 3000,
        "bignum.json": b'{"prompt": "", "seed": ' + b"7" * 5000 + b"}",
        "typo.json": json.dumps({"promt": "", **FAST}).encode(),
        "broken.json": b'{"prompt": ',
    }
    for name, content in hostile.items():
        (inbox / name).write_bytes(content)
        dropped[name] = content
    os.mkfifo(inbox / "pipe.json")
    slow = env(FPLOOPD_TEST_STEP_DELAY_S="0.3")

    def out_and_one_running(n: int) -> bool:
        running = [j for j in jobs(root) if j["state"] == "running" and (j["progress"] or {}).get("step")]
        return len(outbox_jobs(root)) >= n and bool(running)

    for deliveries in (1, 2):  # killed once a job or two are out, with another one mid-way
        daemon = Daemon(root, environ=slow)
        try:
            wait_for(lambda n=deliveries: out_and_one_running(n), 150, f"{deliveries} deliveries and a running job")
        finally:
            daemon.kill_group()
        assert_each_input_once(root, dropped)  # right after each kill
    daemon = Daemon(root)
    try:
        wait_for(lambda: outbox_jobs(root) == [f"good{i}" for i in range(4)] and all(j["delivered_at"] for j in jobs(root)), 150, "the rest")
    finally:
        assert daemon.stop() == 0
    where = assert_each_input_once(root, dropped)
    assert {k: v.split("/")[0] for k, v in where.items()} == {k: "archive" if k.startswith("good") else "failed" for k in dropped}
    views = {v["name"]: v for v in status_is_true(root)}
    assert sorted(views) == sorted([f"good{i}" for i in range(4)] + ["deep", "bignum", "typo", "broken", "pipe"])
    assert all(v["state"] == ("done" if n.startswith("good") else "failed") for n, v in views.items())
    assert all(v["failures"] == 0 for v in views.values())  # kills are interruptions, not failures
    for name in ["pipe", *(Path(n).stem for n in hostile)]:
        assert json.loads((root / "failed" / name / "error.json").read_text())["kind"] == "input", name
