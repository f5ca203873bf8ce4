"""``fploopd bench --stages workers`` on the CPU: real daemons (``fploopd run``) with one and two
CPU workers (``cpu:0,cpu:1``) on ``model = "random:tiny"``; the JSON's shape, every job run once, and
the arithmetic of jobs per hour from the recorded times (no timed assertions). Also the random
model names and the one-worker-per-device rule."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fploopd.bench.workers import dispatch_gaps
from fploopd.cli import main


def test_workers_stage_one_and_two_cpu_workers(tmp_path: Path) -> None:
    out = tmp_path / "workers.json"
    code = main(["bench", "--model", "tiny", "--device", "cpu", "--stages", "workers", "--workers", "1,2",
                 "--jobs-per-worker", "1", "--out", str(out)])  # fmt: skip
    doc = json.loads(out.read_text())
    assert doc["errors"] == {} and code == 0
    assert set(doc["results"]) == {"workers.1", "workers.2"}
    base = doc["results"]["workers.1"]["jobs_per_hour"]
    for count in (1, 2):
        row = doc["results"][f"workers.{count}"]
        assert row["workers"] == count and row["devices"] == [f"cpu:{i}" for i in range(count)]
        assert row["model"] == "random:tiny" and row["model_identity"]["random_weights"] is True
        assert row["daemon_exit"] == 0  # the warm stop
        # No compile helper on the CPU: measured right after the warm-up, the cache never marked.
        assert (row["cache_marked_at_start"], row["cache_marked_before_measuring"]) == (False, False)
        assert row["helper_wait_s"] < 5 and row["warmup_rounds"] == 1
        assert row["warmed_workers"] == count and len(row["warmup_jobs"]) == count
        jobs = row["jobs"]
        assert row["jobs_measured"] == len(jobs) == count  # one measured job per worker
        assert sorted(j["name"] for j in jobs) == [f"job-{i + 1}" for i in range(count)]
        for job in [*jobs, *row["warmup_jobs"]]:  # every job ran once, on one of this count's workers
            assert job["state"] == "done" and job["attempts"] == 0 and job["runs"] == 1, job
            assert job["worker"].endswith(tuple(row["devices"])) and job["run_s"] > 0
            assert job["started_at"] <= job["finished_at"]
        assert sum(row["jobs_per_worker"].values()) == count
        window = max(j["finished_at"] for j in jobs) - min(j["started_at"] for j in jobs)
        assert row["window_s"] == pytest.approx(window)
        assert row["jobs_per_hour"] == pytest.approx(count * 3600 / window)
        assert row["vs_linear"] == pytest.approx(row["jobs_per_hour"] / (count * base))
        first = {j["worker"]: j for j in sorted(jobs, key=lambda j: -j["started_at"])}  # each worker's earliest
        firsts = [j["started_at"] - j["created_at"] for j in first.values()]
        assert row["median_first_dispatch_s"] == pytest.approx(statistics.median(firsts))
        handoffs = [j["finished_at"] - j["started_at"] - j["run_s"] for j in jobs]
        assert row["median_handoff_s"] == pytest.approx(statistics.median(handoffs))
        assert row["supervisor_cpu_s"] is not None and row["supervisor_cpu_s"] >= 0
        assert row["supervisor_cpu_share"] == pytest.approx(row["supervisor_cpu_s"] / row["supervisor_cpu_window_s"])
    assert doc["results"]["workers.1"]["compile_cache"] == "empty"
    assert doc["results"]["workers.2"]["compile_cache"].startswith("kept from the counts before")


def test_a_helper_marked_cache_is_seen_and_the_wait_for_it_is_bounded(tmp_path: Path) -> None:
    from fploopd.bench.workers import INDUCTOR, Waiter, cache_marked
    from fploopd.engine.compile_ahead import MARKER_PREFIX

    assert not cache_marked(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        wait = Waiter(proc, tmp_path / "daemon.log", time.monotonic() + 60)
        assert wait.at_most(lambda: cache_marked(tmp_path), 0.6) is False
        (tmp_path / INDUCTOR).mkdir()
        (tmp_path / INDUCTOR / f"{MARKER_PREFIX}0123456789abcdef.json").write_text("{}")
        assert wait.at_most(lambda: cache_marked(tmp_path), 0.6) is True
    finally:
        proc.kill()
        proc.wait()
    with pytest.raises(RuntimeError, match=r"the daemon exited \(-9\)"):
        wait.at_most(lambda: False, 5)


def test_dispatch_gaps_per_worker() -> None:
    """From one job's done to the next claim by the same worker; other workers' jobs do not count."""
    jobs = [
        {"worker": "1:cuda:0", "started_at": 10.0, "finished_at": 20.0},
        {"worker": "1:cuda:1", "started_at": 10.5, "finished_at": 21.0},
        {"worker": "1:cuda:0", "started_at": 20.25, "finished_at": 30.0},
        {"worker": "1:cuda:1", "started_at": 21.5, "finished_at": 31.0},
        {"worker": "1:cuda:0", "started_at": 30.125, "finished_at": 40.0},
    ]
    assert sorted(dispatch_gaps(jobs)) == [0.125, 0.25, 0.5]


def test_workers_counts_are_checked(tmp_path: Path) -> None:
    for bad in ("0", "two", ""):
        assert main(["bench", "--stages", "workers", "--workers", bad, "--out", str(tmp_path / "x.json")]) == 2


def test_random_model_names_and_one_worker_per_device() -> None:
    from fploopd.daemon.settings import Settings, SettingsError, load_settings
    from fploopd.engine.sources import resolve
    from fploopd.errors import ModelError

    assert Settings(model="random:full", device="cuda:0,cuda:1").devices() == ["cuda:0", "cuda:1"]
    assert Settings(device="cpu:0,cpu:1").devices() == ["cpu:0", "cpu:1"]
    with pytest.raises(SettingsError, match="named twice"):
        load_settings(Path("/nonexistent"), {"device": "cuda,cuda:0"}, env={})
    with pytest.raises(SettingsError, match="random:full or random:tiny"):
        load_settings(Path("/nonexistent"), {"model": "random:huge"}, env={})
    with pytest.raises(ModelError, match="benchmarks"):  # one-shot commands need real files
        resolve("random:full")


def test_a_random_model_on_a_device_group_is_refused_by_name() -> None:
    """Followers load a group's transformer from the model's files; random weights have none."""
    from fploopd.daemon.settings import Settings
    from fploopd.daemon.worker import load_models
    from fploopd.errors import ModelError

    with pytest.raises(ModelError) as caught:
        load_models(Settings(model="random:tiny", device="cpu+cpu"), "cpu+cpu")
    assert caught.value.message == "model random:tiny runs on workers of one device, not on the device group cpu+cpu"
    assert caught.value.field == "model"


def test_a_count_whose_helpers_mark_the_cache_warms_up_twice(tmp_path: Path) -> None:
    """Where this count's compile helpers made the mark (here: written by the test while the count
    runs, as no helper runs on the CPU), every worker runs a second warm-up job before the measured
    ones, so a graph a helper left to its worker is not compiled in a measured job."""
    import threading

    from fploopd.bench.e2e import loop_spec
    from fploopd.bench.workers import INDUCTOR, CountRun
    from fploopd.engine.compile_ahead import MARKER_PREFIX

    caches = tmp_path / "caches"
    run = CountRun(tmp_path / "root", "random:tiny", ["cpu:0"], loop_spec(False), 1, caches, 600.0, helper_wait_s=300.0)

    done = threading.Event()

    def mark() -> None:  # once the first warm-up job is dropped: after the count looked at the cache
        while not done.wait(0.1):
            if any((tmp_path / "root").rglob("warm-1*")):  # in the inbox, then work, outbox, archive
                (caches / INDUCTOR).mkdir(parents=True, exist_ok=True)
                (caches / INDUCTOR / f"{MARKER_PREFIX}0123456789abcdef.json").write_text("{}")
                return

    marker = threading.Thread(target=mark)
    marker.start()
    try:
        row = run.measure()
    finally:
        done.set()
        marker.join()
    assert (row["cache_marked_at_start"], row["cache_marked_before_measuring"], row["warmup_rounds"]) == (False, True, 2)
    assert sorted(j["name"] for j in row["warmup_jobs"]) == ["warm-1", "warm-2"]
    assert all(j["state"] == "done" for j in row["warmup_jobs"]) and row["jobs_measured"] == 1


def test_each_workers_compile_path_is_read_from_its_log(tmp_path: Path) -> None:
    from fploopd.bench.workers import compile_paths
    from fploopd.daemon.layout import Layout

    logs = Layout(tmp_path).logs
    logs.mkdir(parents=True)
    helper = ("compiling ahead in a helper process (24.0 GiB of GPU memory): calls run eagerly until their graphs "
              "are compiled; the cache is marked warm as fploopd-compiled-ahead-0123456789abcdef.json when all are")
    (logs / "worker-cuda0.log").write_text(f"2026-11-28 05:00:00 INFO w:cuda:0 models loaded\n"
                                          f"2026-11-28 05:00:01 INFO w:cuda:0 {helper}\n")  # fmt: skip
    marked = "compiling in the worker on first use: the cache holds this setup's graphs (fploopd-compiled-ahead-0123456789abcdef.json)"
    (logs / "worker-cuda1.log").write_text(f"2026-11-28 05:00:01 INFO w:cuda:1 {marked}\n")
    (logs / "worker-cpu0.log").write_text("2026-11-28 05:00:01 INFO w:cpu:0 worker on cpu:0 ready\n")
    assert compile_paths(tmp_path) == {"worker-cuda0": helper, "worker-cuda1": marked}
