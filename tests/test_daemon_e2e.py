"""The daemon end to end: real ``fploopd`` processes, real signals, the folders used as a user would,
the tiny model on the CPU. Several checks share one daemon run to keep the suite quick."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from daemon_util import (
    FAKE,
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
    wait_for,
)


def test_a_good_drop_is_delivered_and_temporary_names_are_left_alone(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    inbox = root / "inbox" / "loop"
    temps = {"up.json.part": b"{}", "~lock.json": b"{}", ".hidden.json": b"{}", "big.png.crdownload": b"x", "w.tmp": b"y"}
    for name, data in temps.items():
        (inbox / name).write_bytes(data)
    dropped = drop(root, "cat", {"prompt": "a red ball", "seed": 7, **SMALL}, media=image_bytes())
    result = run_once(root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert outbox_jobs(root) == ["cat"]
    out = root / "outbox" / "cat"
    assert sorted(p.name for p in out.iterdir()) == ["cat_7_1loop.mp4", "cat_7_loop_2.mp4", "manifest.json", "preview.webp"]
    assert [p.name for p in (root / "progress").iterdir()] == []  # the live preview moved into the job's folder
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["pipeline"] == "loop" and manifest["seeds"] == [7] and manifest["spec"]["prompt"] == "a red ball"
    assert manifest["model"] is not None and manifest["timings"]
    assert {i["name"]: i["sha256"] for i in manifest["inputs"]}["cat.png"]
    by_kind = {o["kind"]: o for o in manifest["outputs"]}
    assert by_kind["1loop"]["frames"] > 0 and by_kind["loop"]["frames"] == 2 * by_kind["1loop"]["frames"]
    assert by_kind["1loop"]["fps"] == 30 and by_kind["1loop"]["duration_s"] > 0
    assert assert_each_input_once(root, dropped) == {"cat.png": "archive/cat/cat.png", "cat.json": "archive/cat/cat.json"}
    (job,) = status(root)
    assert job["state"] == "done" and job["name"] == "cat" and job["pipeline"] == "loop" and job["attempts"] == 0
    assert job["error"] is None and job["progress"] is not None
    assert sorted(Path(o["path"]).name for o in job["outputs"]) == ["cat_7_1loop.mp4", "cat_7_loop_2.mp4"]
    assert all(Path(o["path"]).is_file() for o in job["outputs"])
    assert not list((root / ".fploopd" / "work").iterdir())  # checkpoints go once delivered
    assert {p.name: p.read_bytes() for p in inbox.iterdir()} == temps  # never touched


def test_bad_inputs_fail_with_the_originals_untouched(tmp_path: Path) -> None:
    root = make_root(tmp_path, grace_s=1.0)
    outside = tmp_path / "outside.png"
    outside.write_bytes(image_bytes(9))
    png = image_bytes()
    cases = {  # stem: (sidecar, expected field, expected file)
        "typo": ({"promt": "x", **SMALL}, "promt", "typo.json"),
        "range": ({"prompt": "", **SMALL, "steps": 500}, "steps", "range.json"),
        "escape": ({"prompt": "", **SMALL, "image": "../x.png"}, "image", "escape.json"),
        "absolute": ({"prompt": "", **SMALL, "image": str(outside)}, "image", "absolute.json"),
        "link": ({"prompt": "", **SMALL, "image": "link.png"}, "image", "link.png"),
        "missing": ({"prompt": "", **SMALL, "image": "never.png"}, "image", "never.png"),
    }
    dropped: dict[str, bytes] = {}
    for stem, (sidecar, _, _) in cases.items():
        dropped.update(drop(root, stem, sidecar, media=png if stem in ("typo", "range", "escape") else None))
    os.symlink(outside, root / "inbox" / "loop" / "link.png")
    dropped.update(drop(root, "corrupt", {"prompt": "", **SMALL}, media=b"CORRUPT: this is not a PNG at all"))
    dropped.update(drop(root, "bare", {"prompt": "", **SMALL}, folder="", media=png))  # no pipeline in inbox/
    (root / "inbox" / "garbage.json").write_bytes(b"{not json")
    dropped["garbage.json"] = b"{not json"
    result = run_once(root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert outbox_jobs(root) == []
    assert sorted(p.name for p in (root / "failed").iterdir()) == sorted([*cases, "corrupt", "bare", "garbage"])
    where = assert_each_input_once(root, dropped)
    assert all(place.startswith("failed/") for place in where.values()), where
    for stem, (_, fld, file) in cases.items():
        error = json.loads((root / "failed" / stem / "error.json").read_text())
        assert set(error) <= {"job", "kind", "error", "field", "file"} and error["kind"] == "input", error
        assert error.get("field") == fld and error.get("file") == file, (stem, error)
    assert (root / "failed" / "link" / "link.png").is_symlink() and outside.read_bytes() == image_bytes(9)
    corrupt = json.loads((root / "failed" / "corrupt" / "error.json").read_text())
    assert corrupt["kind"] == "input" and corrupt.get("file") == "corrupt.png", corrupt
    assert json.loads((root / "failed" / "bare" / "error.json").read_text())["field"] == "pipeline"
    assert (root / "failed" / "garbage" / "error.json").exists()
    states = {j["name"]: (j["state"], j["attempts"]) for j in status_is_true(root)}
    # Rejected at intake, never run; the corrupt image's one try failed and is never retried.
    assert states == {name: ("failed", 1 if name == "corrupt" else 0) for name in states}, states


def test_a_file_still_being_written_is_not_claimed_until_stable(tmp_path: Path) -> None:
    root = make_root(tmp_path, settle_s=0.6, poll=True, poll_interval_s=0.2)  # as on an SMB/NFS share
    daemon = Daemon(root)
    try:
        wait_for(lambda: "watching" in daemon.output(), 60, "the daemon to start")
        second = fploopd("run", "--once", root=root)  # one daemon per root
        assert second.returncode == 2 and "another fploopd daemon" in second.stderr
        inbox = root / "inbox" / "loop"
        png = image_bytes()
        (inbox / "slow.json").write_text(json.dumps({"prompt": "", **SMALL}))
        chunk = max(1, len(png) // 8)
        with open(inbox / "slow.png", "wb") as f:  # a copy that stalls and goes on, as shares do
            for i in range(0, len(png), chunk):
                f.write(png[i : i + chunk])
                f.flush()
                time.sleep(0.3)
                assert (inbox / "slow.png").exists() and jobs(root) == [], "claimed while still being written"
        wait_for(lambda: outbox_jobs(root) == ["slow"], 90, "the delivery")
        assert (root / "archive" / "slow" / "slow.png").read_bytes() == png
    finally:
        assert daemon.stop() == 0


def test_sigterm_drains_and_the_job_resumes(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    dropped = drop(root, "long", {"prompt": "", **SMALL, "steps": 4}, media=image_bytes())

    def running() -> list[dict]:
        return [j for j in jobs(root) if j["state"] == "running" and (j["progress"] or {}).get("step")]

    # Two SIGTERMs: a cold stop, at once; the job is left running, for the next start to recover.
    daemon = Daemon(root, environ=env(FPLOOPD_TEST_STEP_DELAY_S="0.3"))
    wait_for(running, 90, "a running job")
    daemon.signal(signal.SIGTERM)
    wait_for(lambda: "stopping: waiting for long" in daemon.output(), 10, "the warm stop to begin")  # signals do not queue
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(10) != 0
    assert [j["state"] for j in jobs(root)] == ["running"]
    assert_each_input_once(root, dropped)

    # One SIGTERM: a warm stop; the job stops at a step boundary and stays queued.
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # what systemd listens on
    systemd.bind(str(tmp_path / "notify"))
    said: list[str] = []
    listener = threading.Thread(target=lambda: [said.append(systemd.recv(4096).decode()) for _ in iter(int, 1)], daemon=True)
    listener.start()
    daemon = Daemon(root, environ=env(FPLOOPD_TEST_STEP_DELAY_S="0.3", NOTIFY_SOCKET=str(tmp_path / "notify"), WATCHDOG_USEC="400000"))
    wait_for(lambda: "running long" in daemon.output(), 90, "the job to start again")
    (job,) = wait_for(running, 90, "a running job")
    (view,) = status(root)  # status tells the truth while it runs
    assert view["state"] == "running" and view["progress"]["phase"] and view["id"] == job["id"]
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(60) == 0, daemon.output()[-3000:]
    wait_for(lambda: any(m.startswith("STOPPING=1") for m in said), 5, "STOPPING=1")
    assert said[0].startswith("READY=1") and "WATCHDOG=1" in said
    assert any(m.startswith("STATUS=long: sample") for m in said), said
    (view,) = status(root)
    # Both stops count as interrupted tries; neither spends the job's budget of failures.
    assert view["state"] == "queued" and view["attempts"] == 2 and view["failures"] == 0 and view["progress"] is not None
    assert_each_input_once(root, dropped)
    assert run_once(root).returncode == 0
    (view,) = status(root)
    assert view["state"] == "done" and view["attempts"] == 2 and outbox_jobs(root) == ["long"]
    assert json.loads((root / "outbox" / "long" / "manifest.json").read_text())["attempts"] == 2
    assert_each_input_once(root, dropped)


def test_a_burst_is_processed_exactly_once(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    daemon = Daemon(root)
    fast = {**SMALL, "steps": 1, "decode": False}  # latents only: this is about the daemon, not decoding
    try:
        dropped: dict[str, bytes] = {}
        for i in range(8):
            dropped.update(drop(root, f"b{i}", {"prompt": f"burst {i}", **fast}, media=image_bytes(i)))
        # The same stem again, in the bare inbox: a job name with a suffix.
        (root / "inbox" / "b0-again.png").write_bytes(image_bytes(20))
        dropped["b0-again.png"] = image_bytes(20)
        b0_again = drop(root, "b0", {"prompt": "again", "pipeline": "loop", "image": "b0-again.png", **fast}, folder="")
        # And one the safe way, with `fploopd submit`.
        src = tmp_path / "photo.png"
        src.write_bytes(image_bytes(30))
        sets = [a for k, v in fast.items() for a in ("--set", f"{k}={json.dumps(v)}")]
        assert fploopd("submit", src, "--prompt", "waves", "--seed", "5", *sets, root=root).returncode == 0
        dropped["photo.png"] = image_bytes(30)
        bad = fploopd("submit", src, "--set", "stpes=3", root=root)
        assert bad.returncode == 2 and "unknown key 'stpes'" in bad.stderr
        names = sorted([f"b{i}" for i in range(8)] + ["b0-2", "photo"])

        def all_delivered() -> bool:
            status_is_true(root)  # throughout, not only at the end
            return outbox_jobs(root) == names and all(j["delivered_at"] for j in jobs(root))

        wait_for(all_delivered, 150, "10 deliveries", 0.2)
        views = status_is_true(root)
        assert sorted(v["name"] for v in views) == names
        assert all(v["state"] == "done" and v["attempts"] == 0 and v["error"] is None for v in views)
        for v in views:
            assert sorted(Path(o["path"]).name.split("_")[-1] for o in v["outputs"]) == ["latent.png", "latent.safetensors"]
            assert all(Path(o["path"]).parent.name == v["name"] and Path(o["path"]).is_file() for o in v["outputs"])
        where = assert_each_input_once(root, dropped)
        assert all(p.startswith("archive/") for p in where.values()), where
        # Whichever b0 was claimed second is b0-2; each has its own sidecar.
        again = where["b0-again.png"].split("/")[1]
        assert {again, where["b0.png"].split("/")[1]} == {"b0", "b0-2"}
        assert (root / "archive" / again / "b0.json").read_bytes() == b0_again["b0.json"]
        assert (root / "outbox" / "photo" / "photo_5_latent.safetensors").is_file()
        assert sorted(p.name for p in (root / "archive" / "photo").iterdir()) == ["photo.json", "photo.png"]
    finally:
        assert daemon.stop() == 0


def test_a_killed_worker_is_replaced_and_failed_jobs_can_be_retried(tmp_path: Path) -> None:
    root = make_root(tmp_path, max_attempts=2)
    dropped = drop(root, "w", {"prompt": "", **SMALL, "steps": 3}, media=image_bytes())
    daemon = Daemon(root, environ=env(FPLOOPD_TEST_STEP_DELAY_S="0.3"))
    try:

        def running_at(attempts: int) -> bool:
            return any(j["state"] == "running" and j["attempts"] == attempts and (j["progress"] or {}).get("step") for j in jobs(root))

        wait_for(lambda: running_at(0), 90, "a running job")
        daemon.worker().kill()  # as the OOM killer would: the job resumes on a new worker
        wait_for(lambda: running_at(1), 90, "the job running again on a new worker")
        (view,) = status(root)
        assert "died" in view["error"]["error"] and "signal 9" in view["error"]["error"]
        daemon.worker().kill()  # attempt 2 of 2: failed, its files go to failed/
        wait_for(lambda: [j for j in jobs(root) if j["state"] == "failed" and j["delivered_at"]], 60, "the failure")
        # The last try's live preview comes along when it had finished a section before the kill.
        kept = sorted(p.name for p in (root / "failed" / "w").iterdir())
        assert [n for n in kept if n != "preview.webp"] == ["error.json", "w.json", "w.png"], kept
        error = json.loads((root / "failed" / "w" / "error.json").read_text())
        assert error["kind"] == "error" and "giving up" in error["error"]
        assert daemon.proc.poll() is None  # the supervisor lives on

        result = fploopd("retry", "w", root=root)
        assert result.returncode == 0, result.stderr
        wait_for(lambda: outbox_jobs(root) == ["w"], 90, "the retried job's delivery")
        (view,) = status(root)
        # attempts counts every earlier try; the retry gave it a fresh budget of failures.
        assert view["state"] == "done" and view["attempts"] == 2 and view["failures"] == 0 and not (root / "failed" / "w").exists()
        assert assert_each_input_once(root, dropped) == {"w.json": "archive/w/w.json", "w.png": "archive/w/w.png"}
        assert sorted(p.name for p in (root / "archive" / "w").iterdir()) == ["w.json", "w.png"]  # the preview is no input
    finally:
        assert daemon.stop() == 0


def test_cancel_a_queued_and_a_running_job(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    a = drop(root, "a", {"prompt": "", **SMALL, "steps": 4}, media=image_bytes(1))
    b = drop(root, "b", {"prompt": "", **SMALL, "priority": -5}, media=image_bytes(2))
    daemon = Daemon(root, environ=env(FPLOOPD_TEST_STEP_DELAY_S="0.4"))
    try:
        wait_for(lambda: [j for j in jobs(root) if j["name"] == "a" and j["state"] == "running" and j["progress"]], 90, "a running")
        assert fploopd("cancel", "b", root=root).returncode == 0  # queued: cancelled at once
        assert fploopd("cancel", "a", root=root).returncode == 0  # running: stops at the next step
        wait_for(lambda: {j["name"]: j["state"] for j in jobs(root)} == {"a": "cancelled", "b": "cancelled"}, 60, "both cancelled")
        wait_for(lambda: all(j["delivered_at"] for j in jobs(root)), 30, "the moves to failed/")
    finally:
        assert daemon.stop() == 0
    for name, files in (("a", a), ("b", b)):
        assert {k: v.split("/")[0:2] for k, v in assert_each_input_once(root, files).items()} == {k: ["failed", name] for k in files}
        assert json.loads((root / "failed" / name / "error.json").read_text())["kind"] == "cancelled"
    assert {v["name"]: v["state"] for v in status_is_true(root)} == {"a": "cancelled", "b": "cancelled"}
    assert fploopd("cancel", "a", root=root).returncode == 2  # already cancelled


@pytest.mark.skipif(FAKE, reason="the demo is about the real tiny model")
def test_demo(tmp_path: Path) -> None:
    result = fploopd("demo", root=tmp_path / "demo")
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    report = result.stdout.split("done in", 1)[1]
    paths = [line.split()[-1] for line in report.splitlines() if line.strip().endswith((".mp4", ".json"))]
    assert len(paths) == 3 and all(Path(p).is_file() for p in paths), result.stdout
    assert any(p.endswith("_1loop.mp4") for p in paths) and any(p.endswith("_loop_2.mp4") for p in paths)
    # The demo's root runs as it ran: doctor, reading its fploopd.toml, finds nothing to fix.
    doctor = fploopd("doctor", root=tmp_path / "demo")
    assert doctor.returncode == 0 and "[FAIL]" not in doctor.stdout, doctor.stdout


def test_demo_with_the_demo_lora(tmp_path: Path) -> None:
    result = fploopd("demo", "--lora", root=tmp_path / "demo")
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "LoRA merged        demo-style.safetensors at 0.8" in result.stdout
    manifest = json.loads((tmp_path / "demo" / "outbox" / "demo" / "manifest.json").read_text())
    assert manifest["spec"]["loras"] == [{"file": "demo-style.safetensors", "scale": 0.8}]
    assert [entry["name"] for entry in manifest["model"]["loras"]] == ["demo-style.safetensors"]
