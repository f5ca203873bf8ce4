"""The journal's cost per job on SQLite and on PostgreSQL, and a simulated scale test: N host
processes with a fake, instant pipeline taking jobs from one PostgreSQL journal.

    python tools/journal_bench.py --out journal-bench.json            # a throwaway local server
    python tools/journal_bench.py --url postgresql://... --out x.json  # an existing, empty database

A job's journal work is what the daemon does for it: the claim (open_claim, close_claim),
claim_next, three progress writes, the fenced done transition with its delivery plan, and
mark_delivered. The scale test checks that no job was taken twice (every job done, fence 1, one
``running`` event each).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _store(kind: str, where: str, host: str) -> Any:
    from fploopd.daemon.journal import Journal
    from fploopd.daemon.pgjournal import PgJournal

    if kind == "sqlite":
        return Journal(Path(where), "bench", host=host, lease_s=60)
    return PgJournal(where, "bench", host=host, lease_s=60)


def _add_jobs(journal: Any, count: int, prefix: str) -> list[float]:
    """Claims made and closed (what intake writes); the seconds each took."""
    took = []
    for i in range(count):
        job_id = f"{prefix}{i:06d}"
        record = {"moves": [{"field": "sidecar", "src": f"inbox/loop/{job_id}.json", "dst": f".fploopd/work/{job_id}/inputs/{job_id}.json"}]}
        start = time.perf_counter()
        journal.open_claim(job_id, job_id, record)
        journal.close_claim(job_id, name=job_id, pipeline="loop", spec={"prompt": "bench"}, seeds=[1], inputs=[])
        took.append(time.perf_counter() - start)
    return took


def _run_jobs(journal: Any, worker: str, stop_when_empty: bool = True) -> dict[str, Any]:
    """Take jobs until none is left, each through the daemon's journal writes; latencies in seconds."""
    from fploopd.daemon.journal import JobState
    from fploopd.daemon.plan import DeliveryPlan, Move

    claims, rest, done = [], [], 0
    while True:
        start = time.perf_counter()
        job = journal.claim_next(worker)
        claims.append(time.perf_counter() - start)
        if job is None:
            if stop_when_empty:
                break
            continue
        start = time.perf_counter()
        for section in range(3):
            journal.set_progress(job.id, {"phase": "sample", "section": section}, job.fence if journal.multi_host else None)
        plan = DeliveryPlan(moves=(Move(f".fploopd/work/{job.id}/out", f"outbox/{job.name}"),), cleanup=True)
        journal.transition(
            job.id, JobState.DONE, expect=JobState.RUNNING, fence=job.fence if journal.multi_host else None,
            outputs=[{"file": "x.mp4"}], worker=None, delivery=plan,
        )
        journal.mark_delivered(job.id, ["moved"])
        rest.append(time.perf_counter() - start)
        done += 1
    return {"claims": claims[:-1] if claims else [], "rest": rest, "done": done}


def _ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 3),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 3),
    }


def per_job(kind: str, where: str, jobs: int) -> dict[str, Any]:
    journal = _store(kind, where, "h0")
    intake = _add_jobs(journal, jobs, "p")
    start = time.perf_counter()
    ran = _run_jobs(journal, "h0:1:cpu")
    wall = time.perf_counter() - start
    journal.close()
    total = [a + b for a, b in zip(intake, ran["rest"])]
    return {
        "store": kind,
        "jobs": jobs,
        "intake": _ms(intake),
        "claim_next": _ms(ran["claims"]),
        "run_and_deliver": _ms(ran["rest"]),
        "journal_ms_per_job": round((sum(intake) + sum(ran["claims"]) + sum(ran["rest"])) / jobs * 1000, 3),
        "jobs_per_s_one_host": round(jobs / wall, 1),
        "per_job": _ms(total),
    }


def _host(url: str, host: str, out: Any, ready: Any, go: Any) -> None:
    journal = _store("postgresql", url, host)
    ready.put(host)
    go.wait()  # every host connected: the clock starts
    result = _run_jobs(journal, f"{host}:1:cpu")
    journal.close()
    out.put((host, result))


def scale(url: str, hosts: int, jobs: int) -> dict[str, Any]:
    from fploopd.daemon.pgjournal import PgJournal

    journal = PgJournal(url, "bench", host="intake")
    journal.db.execute("TRUNCATE jobs, events, claims")
    _add_jobs(journal, jobs, "s")
    ctx = multiprocessing.get_context("spawn")
    out, ready, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_host, args=(url, f"h{i}", out, ready, go)) for i in range(hosts)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get()
    start = time.perf_counter()
    go.set()
    results = dict(out.get() for _ in procs)
    wall = time.perf_counter() - start
    for p in procs:
        p.join()
    rows = journal.db.execute(
        "SELECT count(*) AS n, sum(CASE WHEN state = 'done' AND fence = 1 THEN 1 ELSE 0 END) AS once FROM jobs"
    ).fetchone()
    runs = journal.db.execute(
        "SELECT count(*) FROM (SELECT job_id FROM events WHERE what = 'running' GROUP BY job_id HAVING count(*) > 1) twice"
    ).fetchone()[0]
    journal.close()
    claims = [c for r in results.values() for c in r["claims"]]
    return {
        "hosts": hosts,
        "jobs": jobs,
        "wall_s": round(wall, 2),
        "jobs_per_s": round(jobs / wall, 1),
        "done_once": int(rows["once"]),
        "taken_twice": int(runs),
        "per_host_min_max": [min(r["done"] for r in results.values()), max(r["done"] for r in results.values())],
        "claim_next": _ms(claims),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="an empty PostgreSQL database (default: a throwaway local server)")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--per-job", type=int, default=500, help="jobs for the per-job comparison")
    parser.add_argument("--hosts", default="1,5,10,20")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    server = None
    if args.url is None:
        sys.path.insert(0, str(ROOT / "tests"))
        import pg_util

        server = pg_util.PgServer(fsync=True)
    try:
        url = args.url or server.new_database()
        url2 = args.url or server.new_database()
        with tempfile.TemporaryDirectory() as tmp:
            result: dict[str, Any] = {
                "machine": {"python": platform.python_version(), "cpus": multiprocessing.cpu_count(), "platform": platform.platform()},
                "per_job": [per_job("sqlite", str(Path(tmp) / "journal.sqlite3"), args.per_job), per_job("postgresql", url, args.per_job)],
                "scale": [scale(url2, int(h), args.jobs) for h in args.hosts.split(",")],
            }
    finally:
        if server is not None:
            server.close()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
