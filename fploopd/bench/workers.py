"""The bench's ``workers`` stage: loop jobs per hour with 1, 2, 4 ... workers, through the real daemon.

For each worker count N (smallest first: the 1-worker figure is the others' baseline, and only the
first count compiles with an empty compile cache), in a fresh root under a temporary folder:

1. settings ``model = "random:full"`` (``random:tiny`` on the CPU: ``engine.random_source``) and
   ``device = "cuda:0,...,cuda:N-1"`` (``cpu:0,...`` on the CPU); the compile caches
   (TorchInductor's, FlashAttention 4's) are one folder shared by the counts, given to the daemon
   through the environment variables the worker honours (``worker.use_compile_cache``);
2. ``python -m fploopd run`` as a child process (the supervisor); wait until every worker has built
   its models;
3. N warm-up loop jobs dropped the safe way (``daemon.submit``: image first, sidecar last), one per
   worker (each is idle), so the measured jobs find every worker compiled; wait until they end; on
   a GPU, wait (``HELPER_WAIT_S`` at most) for the compile helpers' mark in the cache and, when
   this count's helpers made it, run N more warm-up jobs (what a helper left to its worker is
   compiled there);
4. K x N measured jobs dropped at once; wait until they end; the supervisor's CPU time
   (``/proc/<pid>/stat`` utime + stime, the supervisor process alone) read before the drop and after
   the last job; then SIGTERM (a warm stop) and wait for the daemon to exit;
5. from the journal (a job's ``running`` event names its worker; ``started_at`` is the claim,
   ``finished_at`` the done transition) and each manifest's ``timings.total_s`` (the worker's own
   run of the job): jobs per hour = measured jobs / (last finish - first start), its ratio to N times
   the 1-worker figure, the supervisor's medians of: the dispatch gap (a worker's previous job done
   in the journal -> its next job claimed), the first dispatch (a job in the journal, its idle
   worker's first -> claimed) and the handoff (claim -> done minus the worker's own run: sending the
   job, the manifest, the journal), and every job's row.

The loop job is the e2e stage's (``e2e.loop_spec``): full size main 1 + connection 1 at the 640
bucket, ``--steps`` steps (25 by default, FramePack's; fewer to fit a short GPU lease: every row
says how many); tiny: a few steps at 64 px.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fploopd

if TYPE_CHECKING:
    from fploopd.bench.run import Bench

POLL_S = 0.5
# After the warm-up jobs, how long to wait for the workers' compile helpers to mark the cache warm
# (engine/compile_ahead.py): a job switches to compiled code only at its start, so measured jobs
# that start before the helper is done run partly eager (58-61 s against 48 s on an H200). The
# helper finished the 640 loop job's graphs about 185 s after it started there.
HELPER_WAIT_S = 360.0
INDUCTOR = "inductor"  # TorchInductor's folder in the counts' shared compile cache
STOP_TIMEOUT_S = 180.0  # a warm stop waits for a running job's next step; the queue is empty by then
# Settings of the bench's roots: quick intake (the drops are written the safe way, complete at once).
ROOT_SETTINGS: dict[str, Any] = {"settle_s": 0.5, "rescan_interval_s": 0.5, "min_free_mb": 16, "log_level": "INFO"}


def devices_for(count: int, cuda: bool) -> list[str]:
    return [f"cuda:{i}" if cuda else f"cpu:{i}" for i in range(count)]


def run_workers(bench: Bench) -> None:
    """One row per worker count (``workers.N``); a count that fails records its error, the others go on."""
    from fploopd.bench.e2e import loop_spec

    cfg = bench.cfg
    full, cuda = cfg.size == "full", bench.device.type == "cuda"
    model = "random:full" if full else "random:tiny"
    spec = loop_spec(full, steps=cfg.steps if full else None)
    visible = _gpu_count() if cuda else None
    base: float | None = None
    with tempfile.TemporaryDirectory(prefix="fploopd-bench-workers-") as tmp:
        caches = cfg.compile_cache or Path(tmp) / "compile-cache"
        cache_state = f"kept in {caches}" if cfg.compile_cache else "empty"
        for count in cfg.worker_counts:
            name = f"workers.{count}"
            if visible is not None and count > visible:
                bench.record(name, None, workers=count, note=f"skipped: {visible} GPU(s) visible")
                continue
            run = CountRun(Path(tmp) / f"root-{count}", model, devices_for(count, cuda), spec, cfg.jobs_per_worker,
                           caches, cfg.workers_timeout_s, HELPER_WAIT_S if cuda else 0.0)  # fmt: skip
            try:
                row = run.measure()
            except Exception as exc:  # noqa: BLE001 - the JSON says what broke; the other counts go on
                kept = keep_logs(run.root, cfg.out.parent / f"{cfg.out.stem}-{name}-logs")
                bench.errors[name] = f"{type(exc).__name__}: {exc}" + (f" (logs: {kept})" if kept else "")
                bench.write()
                continue
            if count == 1:
                base = row["jobs_per_hour"]
            row["vs_linear"] = row["jobs_per_hour"] / (count * base) if base else None
            row["compile_cache"] = cache_state
            cache_state = f"kept from the counts before ({caches})"
            bench.record(name, None, **row)


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


@dataclass
class CountRun:
    """One worker count: its root, its daemon, its jobs."""

    root: Path
    model: str
    devices: list[str]
    spec: Any  # JobSpec
    per_worker: int
    caches: Path
    timeout_s: float
    helper_wait_s: float = 0.0  # see HELPER_WAIT_S; 0: measure right after the warm-up jobs

    def measure(self) -> dict[str, Any]:
        from fploopd.daemon.layout import Layout

        self.make_root()
        image = self.root.parent / f"{self.root.name}-image.png"
        _write_image(image)
        n = len(self.devices)
        log_path = self.root / "daemon.log"
        t_start = time.time()
        marked_before = cache_marked(self.caches)
        with log_path.open("wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "fploopd", "run", "--root", str(self.root)],
                                    env=daemon_env(self.caches), stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
            try:
                wait = Waiter(proc, log_path, time.monotonic() + self.timeout_s)
                wait.until(self.workers_ready, "every worker to build its models")
                ready_at = time.time()
                warm = self.drop(image, [f"warm-{i + 1}" for i in range(n)])
                wait.until(lambda: self.ended(warm), "the warm-up jobs")
                warm_at = time.time()
                marked = marked_before or (self.helper_wait_s > 0
                                           and wait.at_most(lambda: cache_marked(self.caches), self.helper_wait_s))  # fmt: skip
                helper_wait_s = time.time() - warm_at
                rounds = 1
                if marked and not marked_before:
                    # What the helper left to the workers (a graph out of its memory share) they
                    # compile at their next job: one more warm-up job each, so no measured job does.
                    again = self.drop(image, [f"warm-{n + i + 1}" for i in range(n)])
                    wait.until(lambda: self.ended(again), "the second warm-up jobs")
                    warm, rounds = warm | again, 2
                cpu0, t0 = cpu_seconds(proc.pid), time.time()
                measured = self.drop(image, [f"job-{i + 1}" for i in range(self.per_worker * n)])
                wait.until(lambda: self.ended(measured), "the measured jobs")
                cpu1, t1 = cpu_seconds(proc.pid), time.time()
                code = stop_warm(proc)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        jobs = job_rows(Layout(self.root))
        row = summarize([j for j in jobs if j["name"] in measured], n)
        warmed = sorted({j["worker"] for j in jobs if j["name"] in warm})
        row.update(
            workers=n, devices=self.devices, model=self.model, steps=self.spec.steps,
            job=f"loop, main {self.spec.main_sections} + connection {self.spec.connection_sections}, "
                f"{self.spec.steps} steps, {self.spec.resolution} bucket",
            startup_s=ready_at - t_start, warmup_s=warm_at - ready_at, warmed_workers=len(warmed),
            cache_marked_at_start=marked_before, cache_marked_before_measuring=marked, helper_wait_s=helper_wait_s,
            warmup_rounds=rounds, compile_paths=compile_paths(self.root),
            warmup_jobs=lean([j for j in jobs if j["name"] in warm]),
            supervisor_cpu_s=(cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None,
            supervisor_cpu_window_s=t1 - t0, daemon_exit=code,
        )  # fmt: skip
        cpu = row["supervisor_cpu_s"]
        row["supervisor_cpu_share"] = cpu / row["supervisor_cpu_window_s"] if cpu is not None else None
        return row

    def make_root(self) -> None:
        from fploopd.daemon.rootinit import init_root

        init_root(self.root)
        values = {**ROOT_SETTINGS, "model": self.model, "device": ",".join(self.devices)}
        (self.root / "fploopd.toml").write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))

    def drop(self, image: Path, names: list[str]) -> set[str]:
        """Loop jobs into ``inbox/loop/``: the image first, the sidecar last (``fploopd submit``'s way)."""
        from fploopd.daemon.layout import Layout
        from fploopd.daemon.submit import submit

        fields = self.spec.model_dump(mode="json", exclude_unset=True, exclude={"pipeline"})
        for name in names:
            submit(Layout(self.root), [image], pipeline="loop", name=name, fields=fields)
        return set(names)

    def workers_ready(self) -> bool:
        from fploopd.daemon.control import open_journal
        from fploopd.daemon.layout import Layout

        journal = open_journal(Layout(self.root), "bench", readonly=True)
        if journal is None:
            return False
        try:
            workers = journal.daemon_state().get("workers") or {}
        finally:
            journal.close()
        broken = [f"{d}: {w.get('error')}" for d, w in workers.items() if w.get("state") == "cannot load the models"]
        if broken:
            raise RuntimeError("the workers cannot load the models: " + "; ".join(broken))
        return all(workers.get(d, {}).get("state") == "ready" for d in self.devices)

    def ended(self, names: set[str]) -> bool:
        from fploopd.daemon.control import open_journal
        from fploopd.daemon.journal import TERMINAL
        from fploopd.daemon.layout import Layout

        journal = open_journal(Layout(self.root), "bench", readonly=True)
        if journal is None:
            return False
        try:
            done = {j.name for j in journal.jobs(tuple(TERMINAL))}
        finally:
            journal.close()
        return names <= done


class Waiter:
    """Polls a condition while the daemon lives, until a deadline; a dead daemon or the deadline
    raises with the end of its log."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, deadline: float) -> None:
        self.proc, self.log, self.deadline = proc, log, deadline

    def until(self, condition: Callable[[], bool], what: str) -> None:
        while not condition():
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited ({self.proc.returncode}) while waiting for {what}: {self._tail()}")
            if time.monotonic() > self.deadline:
                raise RuntimeError(f"timed out waiting for {what} (--workers-timeout): {self._tail()}")
            time.sleep(POLL_S)

    def at_most(self, condition: Callable[[], bool], seconds: float) -> bool:
        """Poll ``condition`` for up to ``seconds`` (a dead daemon raises); whether it came true."""
        give_up = time.monotonic() + seconds
        while not condition():
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited ({self.proc.returncode}): {self._tail()}")
            if time.monotonic() > give_up:
                return False
            time.sleep(POLL_S)
        return True

    def _tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"


def cache_marked(caches: Path) -> bool:
    """Whether a compile helper has marked the daemon's compile cache (``daemon_env``) warm."""
    from fploopd.engine.compile_ahead import MARKER_PREFIX

    return any((caches / INDUCTOR).glob(f"{MARKER_PREFIX}*.json"))


def compile_paths(root: Path) -> dict[str, str]:
    """How each worker of a count compiled, by its log file: its line from ``compile_ahead.attach``
    (a helper and the marker it will write, or on first use and why). Empty where none said (the
    CPU, compiling off)."""
    from fploopd.daemon.layout import Layout
    from fploopd.engine.compile_ahead import SAYS_FIRST_USE, SAYS_HELPER

    paths: dict[str, str] = {}
    for log in sorted(Layout(root).logs.glob("worker-*.log")):
        for line in log.read_text(errors="replace").splitlines():
            at = next((line.find(says) for says in (SAYS_HELPER, SAYS_FIRST_USE) if says in line), -1)
            if at >= 0:
                paths[log.stem] = line[at:]
                break
    return paths


def keep_logs(root: Path, dest: Path) -> Path | None:
    """A failed count's daemon and worker logs copied out of its temporary root, for the post-mortem."""
    import shutil

    from fploopd.daemon.layout import Layout

    logs = [root / "daemon.log", *sorted(Layout(root).logs.glob("*.log*"))]
    logs = [p for p in logs if p.is_file()]
    if not logs:
        return None
    dest.mkdir(parents=True, exist_ok=True)
    for path in logs:
        shutil.copy2(path, dest / path.name)
    return dest


def daemon_env(caches: Path) -> dict[str, str]:
    """The daemon's environment: fploopd importable as this process imports it (a GPU machine may
    run it from a checkout), the compile caches shared by the counts, no setting from this one's
    environment (the root's fploopd.toml decides)."""
    from fploopd.daemon.settings import ENV_PREFIX, SETTING_NAMES

    settings = {f"{ENV_PREFIX}{n.upper()}" for n in SETTING_NAMES} | {f"{ENV_PREFIX}ROOT", "NOTIFY_SOCKET"}
    env = {k: v for k, v in os.environ.items() if k not in settings}
    here = str(Path(fploopd.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
    env["TORCHINDUCTOR_CACHE_DIR"] = str(caches / INDUCTOR)
    env["FLASH_ATTENTION_CUTE_DSL_CACHE_DIR"] = str(caches / "flash-attention")
    return env


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process (not its children), from /proc; None where there is none."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # fields 14 and 15 of stat(5)


def stop_warm(proc: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM (the daemon's warm stop) and wait; its exit status, or None when it had to be killed."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def job_rows(layout: Any) -> list[dict[str, Any]]:
    """Every job of the root: state, tries, the worker of its last run, claim and done times (journal),
    the worker's own run time (its manifest's ``timings.total_s``)."""
    from fploopd.daemon.control import open_journal

    journal = open_journal(layout, "bench", readonly=True)
    if journal is None:
        return []
    rows = []
    try:
        for job in journal.jobs():
            events = journal.events(job.id)
            runs = [e for e in events if e["what"] == "running"]
            detail = runs[-1]["detail"] if runs else None
            detail = json.loads(detail) if isinstance(detail, str) else detail or {}
            rows.append({
                "name": job.name, "state": str(job.state.value), "attempts": job.attempts, "runs": len(runs),
                "worker": detail.get("worker"), "created_at": job.created_at, "started_at": job.started_at,
                "finished_at": job.finished_at,
                # a retried job's last error (a job that failed once and then ran is still done)
                "error": job.error.error if job.error is not None else None,
                "events": [e["what"] for e in events],
                **_from_manifest(layout.outbox / job.name / "manifest.json"),
            })  # fmt: skip
    finally:
        journal.close()
    return rows


def _from_manifest(path: Path) -> dict[str, Any]:
    """The worker's own run time and the model identity the job's manifest records."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"run_s": None, "model_identity": None}
    timings = manifest.get("timings") if isinstance(manifest, dict) else None
    run_s = timings.get("total_s") if isinstance(timings, dict) else None
    return {"run_s": run_s, "model_identity": manifest.get("model")}


def summarize(jobs: list[dict[str, Any]], workers: int) -> dict[str, Any]:
    """Jobs per hour over the measured window and what the supervisor added between jobs."""
    done = [j for j in jobs if j["state"] == "done"]
    if not done or len(done) != len(jobs):
        bad = [f"{j['name']}: {j['state']}" + (f" ({j['error']})" if j["error"] else "") for j in jobs if j["state"] != "done"]
        raise RuntimeError(f"measured jobs did not all finish: {', '.join(bad) or 'none ran'}")
    first, last = min(j["started_at"] for j in done), max(j["finished_at"] for j in done)
    window = last - first
    gaps, handoffs = dispatch_gaps(done), [j["finished_at"] - j["started_at"] - j["run_s"] for j in done if j["run_s"] is not None]
    per_worker: dict[str, int] = {}
    for j in done:
        per_worker[j["worker"]] = per_worker.get(j["worker"], 0) + 1
    return {
        "jobs_measured": len(done),
        "window_s": window,
        "jobs_per_hour": len(done) * 3600.0 / window if window > 0 else None,
        "median_job_s": _median([j["run_s"] for j in done if j["run_s"] is not None]),
        "median_dispatch_gap_s": _median(gaps),
        "median_first_dispatch_s": _median(first_dispatches(done)),
        "median_handoff_s": _median(handoffs),
        "jobs_per_worker": per_worker,
        "model_identity": done[0].get("model_identity"),
        "jobs": lean(sorted(jobs, key=lambda j: j["started_at"])),
    }


def lean(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Job rows without the model identity (the row of the count says it once)."""
    return [{k: v for k, v in j.items() if k != "model_identity"} for j in jobs]


def first_dispatches(jobs: list[dict[str, Any]]) -> list[float]:
    """For each worker's first job (it was idle, the job queued): the job's claim less its intake."""
    first: dict[str, dict[str, Any]] = {}
    for j in sorted(jobs, key=lambda j: j["started_at"]):
        first.setdefault(j["worker"], j)
    return [j["started_at"] - j["created_at"] for j in first.values()]


def dispatch_gaps(jobs: list[dict[str, Any]]) -> list[float]:
    """For each worker, the time from one job's done transition to the claim of its next job."""
    by_worker: dict[str, list[dict[str, Any]]] = {}
    for j in jobs:
        by_worker.setdefault(j["worker"], []).append(j)
    gaps = []
    for runs in by_worker.values():
        runs.sort(key=lambda j: j["started_at"])
        gaps += [b["started_at"] - a["finished_at"] for a, b in itertools.pairwise(runs)]
    return gaps


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _write_image(path: Path) -> None:
    from PIL import Image

    from fploopd.bench.e2e import job_image

    Image.fromarray(job_image()).save(path)


__all__ = ["CountRun", "cpu_seconds", "devices_for", "dispatch_gaps", "run_workers", "summarize"]
