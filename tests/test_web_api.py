"""Watching and steering from outside the GPU machine, with the real daemon on the tiny model:
progress files in the share, status.json, and ``fploopd run --http`` (JSON API, /healthz, /metrics,
cancel and retry, uploads, tokens) over real loopback HTTP."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

from daemon_util import SMALL, Daemon, drop, env, fploopd, image_bytes, jobs, make_root, status, wait_for
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from web_util import free_port, multipart, reachable, request

POST = {"X-Fploopd-Token": "local"}


def job_row(root: Path, name: str) -> dict:
    rows = [j for j in jobs(root) if j["name"] == name]
    return rows[0] if rows else {}


def settled(root: Path, name: str, state: str) -> bool:
    row = job_row(root, name)
    return row.get("state") == state and row.get("delivered_at") is not None


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}


def webp_frames(path: Path) -> int:
    with Image.open(path) as im:
        assert im.format == "WEBP"
        return getattr(im, "n_frames", 1)


def test_progress_api_cancel_retry_health_and_metrics(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    daemon = Daemon(root, "--http", f"127.0.0.1:{port}", environ=env(FPLOOPD_TEST_STEP_DELAY_S="0.4"))
    try:
        wait_for(lambda: (r := reachable(base + "/healthz")) is not None and r.status == 200, 120, "a healthy daemon")
        media = image_bytes(3)
        drop(root, "cat", {"prompt": "a cat", "seed": 5, **SMALL}, media=media)

        # While it runs: its progress file and live preview are in progress/.
        progress = root / "progress"
        doc = wait_for(
            lambda: (progress / "cat.json").is_file() and (d := json.loads((progress / "cat.json").read_text()))["phase"] == "sample" and d["step"] and d,
            120, "progress/cat.json at a sampling step (a section's start has no step count yet)",
        )
        assert doc["name"] == "cat" and doc["state"] == "running" and doc["sections"] == 3 and doc["steps"] == SMALL["steps"]
        assert doc["elapsed_s"] >= 0 and doc["preview"] == "cat.webp"
        wait_for(lambda: (progress / "cat.webp").is_file(), 60, "the live preview")
        assert request(f"{base}/api/jobs/cat/progress").json()["name"] == "cat"
        assert request(f"{base}/api/jobs/cat/preview").headers["content-type"] == "image/webp"

        # A second job waits in the queue: its priority is raised by the page's call and the command's.
        drop(root, "cow", {"prompt": "a cow", **SMALL}, media=image_bytes(6))
        wait_for(lambda: job_row(root, "cow").get("state") == "queued", 60, "cow queued")
        assert request(f"{base}/api/jobs/cow/priority?priority=5", "POST", POST).json()["priority"] == 5
        assert fploopd("priority", "cow", "7", root=root).returncode == 0 and job_row(root, "cow")["priority"] == 7
        assert request(f"{base}/api/jobs/cow/priority?priority=500", "POST", POST).status == 409  # out of range
        assert request(f"{base}/api/jobs/cat/priority?priority=1", "POST", POST).status == 409  # running: not queued
        assert request(f"{base}/api/jobs/cow/cancel", "POST", POST).json()["state"] == "cancelled"

        # Cancel through the API: a POST without the page's header is refused (no cross-site forms).
        assert request(f"{base}/api/jobs/cat/cancel", "POST").status == 403
        assert request(f"{base}/api/jobs/cat/cancel", "POST", {"Origin": "http://evil.example", **POST}).status == 403
        assert request(f"{base}/api/jobs/cat/cancel", "POST", POST).status == 200
        wait_for(lambda: settled(root, "cat", "cancelled"), 120, "the cancel")
        failed = root / "failed" / "cat"
        assert sorted(p.name for p in failed.iterdir()) == ["cat.json", "cat.png", "error.json", "preview.webp"]
        assert (failed / "cat.png").read_bytes() == media and webp_frames(failed / "preview.webp") >= 2
        assert not list(progress.iterdir()), "the share keeps no progress files of a job that ended"

        # Retry through the API: the preview stays out of the inputs, the job runs to the outbox.
        assert request(f"{base}/api/jobs/cat/retry", "POST", POST).status == 200
        wait_for(lambda: settled(root, "cat", "done"), 180, "the retried job")
        assert sorted(p.name for p in (root / "archive" / "cat").iterdir()) == ["cat.json", "cat.png"]
        # One frame per latent of the sections sampled by this try (it resumed from a checkpoint).
        assert SMALL["window"] <= webp_frames(root / "outbox" / "cat" / "preview.webp") <= 3 * SMALL["window"]
        assert not list(progress.iterdir())

        # GET /api/jobs is `fploopd status --json`.
        assert request(f"{base}/api/jobs").json() == status(root)
        view = request(f"{base}/api/jobs/cat").json()
        assert view["state"] == "done" and request(f"{base}/api/jobs/{view['id']}/outputs/0").status == 200
        assert json.loads(request(f"{base}/api/jobs/cat/manifest").body)["job"] == view["id"]
        assert request(f"{base}/api/jobs/nosuch").status == 404
        assert "/api/jobs/{key}/cancel" in request(f"{base}/openapi.json").json()["paths"]
        # A DNS-rebinding page reaches the server under another host name: refused.
        assert request(f"{base}/api/jobs", headers={"Host": f"evil.example:{port}"}).status == 403

        # /metrics parses and its counts are the journal's.
        samples = metric_samples(request(f"{base}/metrics").body.decode())
        states = [j["state"] for j in jobs(root)]
        for state in ("queued", "running", "done", "failed", "cancelled"):
            assert samples[("fploopd_jobs", (("state", state),))] == states.count(state)
        assert samples[("fploopd_queue_depth", ())] == 0 and samples[("fploopd_waiting_drops", ())] == 0
        assert samples[("fploopd_job_seconds_count", (("pipeline", "loop"),))] == 1
        assert samples[("fploopd_section_seconds_count", (("pipeline", "loop"),))] >= 3
        assert samples[("fploopd_last_delivery_timestamp_seconds", ())] == job_row(root, "cat")["delivered_at"]
        assert not any(name.startswith("fploopd_gpu_memory") for name, _ in samples)  # the CPU reports none

        # /healthz: unhealthy while the worker is dead, healthy again after its restart.
        daemon.worker().send_signal(signal.SIGKILL)
        wait_for(lambda: request(f"{base}/healthz").status == 503, 60, "/healthz to say unhealthy")
        wait_for(lambda: request(f"{base}/healthz").status == 200, 120, "/healthz healthy after the restart")
        samples = metric_samples(request(f"{base}/metrics").body.decode())
        assert samples[("fploopd_worker_restarts_total", (("device", "cpu"),))] == 1

        # status.json at the root: the same objects, plus the daemon.
        doc = wait_for(lambda: json.loads((root / "status.json").read_text()) if (root / "status.json").is_file() else None, 30, "status.json")
        assert [j["name"] for j in doc["jobs"]] == ["cat", "cow"] and doc["daemon"]["pid"] == daemon.proc.pid
    finally:
        daemon.stop()


def test_a_crash_leaves_no_stale_progress_files(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    daemon = Daemon(root, environ=env(FPLOOPD_TEST_STEP_DELAY_S="0.4"))
    try:
        drop(root, "dog", {"prompt": "a dog", "seed": 2, **SMALL}, media=image_bytes(5))
        wait_for(lambda: (root / "progress" / "dog.webp").is_file(), 120, "the live preview")
    finally:
        daemon.kill_group()  # SIGKILL: nothing is cleaned up
    ghosts = ["ghost.json", "ghost.webp", ".ghost.webp.abcd1234.part.webp"]
    for name in ghosts:
        (root / "progress" / name).write_bytes(b"left by a crash")
    daemon = Daemon(root)
    try:
        wait_for(lambda: not any((root / "progress" / g).exists() for g in ghosts), 60, "the start-up sweep")
        wait_for(lambda: settled(root, "dog", "done"), 180, "the resumed job")
        assert sorted(p.name for p in (root / "progress").iterdir()) == []
        assert (root / "outbox" / "dog" / "preview.webp").is_file()
    finally:
        daemon.stop()


def test_a_web_server_that_cannot_run_never_stops_the_jobs(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    drop(root, "owl", {"prompt": "an owl", **SMALL}, media=image_bytes(8))
    with socket.socket() as taken:  # someone else has the port: uvicorn cannot bind
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = fploopd("run", "--once", "--http", f"127.0.0.1:{port}", root=root, timeout=150)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the web server failed" in result.stderr
    assert settled(root, "owl", "done") and (root / "outbox" / "owl" / "preview.webp").is_file()


def test_tokens_and_uploads(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    port = free_port()

    # Off loopback without a token: refused before anything starts.
    refused = fploopd("run", "--http", f"0.0.0.0:{port}", root=root)
    assert refused.returncode != 0 and "http_token" in refused.stderr, refused.stderr[-2000:]
    assert not (root / ".fploopd" / "journal.sqlite3").exists()

    base = f"http://127.0.0.1:{port}"
    secret = {"X-Fploopd-Token": "s3cret"}
    daemon = Daemon(root, "--http", f"127.0.0.1:{port}", environ=env(FPLOOPD_HTTP_TOKEN="s3cret"))
    try:
        wait_for(lambda: (r := reachable(base + "/healthz")) is not None and r.status != 404, 120, "the web server")
        for path in ("/", "/api/jobs", "/healthz", "/metrics", "/openapi.json"):
            assert request(base + path).status == 401, path
        assert request(base + "/api/jobs", headers={"X-Fploopd-Token": "wrong"}).status == 401
        assert request(base + "/api/jobs", headers=secret).status == 200
        assert request(base + "/api/jobs", headers={"Authorization": "Bearer s3cret"}).status == 200
        page = request(base + "/?token=s3cret")
        assert page.status == 200 and "fploopd_token=s3cret" in page.headers.get("set-cookie", "")
        cookie = {"Cookie": "fploopd_token=s3cret"}
        assert request(base + "/api/jobs", headers=cookie).status == 200
        body, ctype = multipart({"prompt": "x"}, [("media", "a.png", image_bytes())])
        assert request(base + "/api/jobs", "POST", {**cookie, "Content-Type": ctype}, body).status == 401  # a cookie never posts

        # An upload whose sidecar does not validate fails like an inbox drop and loses nothing.
        media = image_bytes(7)
        body, ctype = multipart(
            {"prompt": "too many steps", "name": "bad", "settings": json.dumps({**SMALL, "steps": 500})},
            [("media", "../../etc/bad.png", media)],
        )
        reply = request(base + "/api/jobs", "POST", {**secret, "Content-Type": ctype}, body)
        assert reply.status == 422 and reply.json()["error"]["field"] == "steps", reply.body
        wait_for(lambda: (root / "failed" / "bad" / "error.json").is_file(), 60, "the bad upload in failed/")
        error = json.loads((root / "failed" / "bad" / "error.json").read_text())
        assert error["field"] == "steps" and (root / "failed" / "bad" / "bad.png").read_bytes() == media
        assert not list((root / "inbox" / "loop").iterdir())
        assert not [p for p in (root / ".fploopd").iterdir() if p.name.startswith("upload-")]  # no staging left

        # A form that is no drop at all is refused and writes nothing.
        body, ctype = multipart({"prompt": "x"}, [("media", "notes.txt", b"hello")])
        assert request(base + "/api/jobs", "POST", {**secret, "Content-Type": ctype}, body).status == 422
        assert not list((root / "inbox" / "loop").iterdir())
    finally:
        daemon.stop()
