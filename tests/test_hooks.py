"""Delivery hooks for real: a command hook and a URL hook (against an HTTP server on 127.0.0.1 that
the test starts), a SIGKILL between delivery and hook, hooks that fail and then succeed or give up,
and a hook that hangs while the queue goes on."""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import pytest
from daemon_util import SMALL, Daemon, drop, env, fploopd, image_bytes, jobs, make_root, run_once, status, wait_for

SECRET = "test-secret"


class Receiver:
    """An HTTP server on 127.0.0.1 that records every POST (headers and body) and answers 200."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append({"path": self.path, "headers": dict(self.headers), "body": body})
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"thanks")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/fploopd"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


def add_toml(root: Path, text: str) -> None:
    with open(root / "fploopd.toml", "a") as f:
        f.write("\n" + text + "\n")


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(body)
    return str(path)


def hooks_of(root: Path, name: str) -> dict[str, dict[str, Any]]:
    (view,) = [v for v in status(root) if v["name"] == name]
    return {h["hook"]: h for h in view["hooks"]}


@pytest.mark.parametrize("point", ["deliver:after_move2", "hooks:planned"])
def test_a_crash_between_delivery_and_hooks_runs_each_hook_once_after_the_restart(
    tmp_path: Path, receiver: Receiver, point: str
) -> None:
    root = make_root(tmp_path)
    calls = tmp_path / "calls.txt"
    append = script(tmp_path, "append.py", "import sys\nwith open(sys.argv[1], 'a') as f: f.write(' '.join(sys.argv[2:]) + '\\n')\n")
    add_toml(root, f"""
[[hooks]]
name = "append"
run = [{json.dumps(sys.executable)}, {json.dumps(append)}, {json.dumps(str(calls))}, "{{id}}", "{{state}}", "{{job}}", "{{manifest}}"]
[[hooks]]
name = "post"
url = "{receiver.url}"
secret = "{SECRET}"
""")
    drop(root, "cat", {"prompt": "", **SMALL, "seed": 3}, media=image_bytes())

    crashed = run_once(root, env(FPLOOPD_TEST_CRASH_AT=point))
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    assert f"test crash at {point}" in crashed.stderr
    (job,) = jobs(root)
    assert job["state"] == "done" and (root / "outbox" / "cat" / "manifest.json").is_file()  # delivered...
    assert not calls.exists() and receiver.requests == []  # ...and no hook ran yet

    restarted = run_once(root)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    again = run_once(root)  # nothing left to do: no hook runs twice
    assert again.returncode == 0, again.stderr[-3000:]

    manifest = root / "outbox" / "cat" / "manifest.json"
    assert calls.read_text().splitlines() == [f"{job['id']} done cat {manifest}"]
    (request,) = receiver.requests
    assert request["body"] == manifest.read_bytes()
    assert request["headers"]["Idempotency-Key"] == job["id"]
    assert request["headers"]["Content-Type"] == "application/json"
    expected = hmac.new(SECRET.encode(), request["body"], hashlib.sha256).hexdigest()
    assert request["headers"]["X-Fploopd-Signature"] == f"sha256={expected}"
    hooks = hooks_of(root, "cat")
    assert {name: (h["status"], h["tries"]) for name, h in hooks.items()} == {"append": ("done", 1), "post": ("done", 1)}
    assert hooks["post"]["last"]["http_status"] == 200 and hooks["append"]["last"]["exit_code"] == 0


def test_failing_hooks_are_retried_then_done_or_given_up_and_shown(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    counter = tmp_path / "count.txt"
    flaky = script(tmp_path, "flaky.py", f"""
import sys
from pathlib import Path
counter = Path({str(counter)!r})
n = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(n))
print(f"call {{n}}")
sys.exit(0 if n >= 3 else 1)
""")
    add_toml(root, f"""
[[hooks]]
name = "flaky"
on = ["done", "failed"]
run = [{json.dumps(sys.executable)}, {json.dumps(flaky)}]
retries = 3
backoff_s = 0.1
[[hooks]]
name = "broken"
pipeline = "loop"
run = [{json.dumps(sys.executable)}, "-c", "import sys; print('no luck'); sys.exit(4)"]
retries = 1
backoff_s = 0.1
[[hooks]]
name = "other-channel"
channel = "elsewhere"
run = ["false"]
""")
    drop(root, "cat", {"prompt": "", **SMALL, "seed": 3}, media=image_bytes())
    done = run_once(root)
    assert done.returncode == 0, done.stderr[-3000:]

    assert counter.read_text() == "3"  # failed twice, then succeeded: three runs, and no more
    hooks = hooks_of(root, "cat")
    assert set(hooks) == {"flaky", "broken"}  # the channel filter left other-channel out
    assert (hooks["flaky"]["status"], hooks["flaky"]["tries"], hooks["flaky"]["last"]["output"].strip()) == ("done", 3, "call 3")
    broken = hooks["broken"]
    assert (broken["status"], broken["tries"], broken["last"]["exit_code"]) == ("failed", 2, 4)
    assert "no luck" in broken["last"]["output"]
    assert "hook flaky for cat failed (exit_code: 1" in done.stderr and "try 2 of 4" in done.stderr
    assert "hook broken for cat failed 2 time(s), giving up: exit_code: 4" in done.stderr

    shown = fploopd("status", root=root)
    assert "cat: hook broken failed after 2 tries: exit code 4" in shown.stdout, shown.stdout
    assert "flaky" not in shown.stdout  # done hooks are not a problem to show


def test_a_hanging_hook_is_killed_at_its_timeout_while_the_queue_goes_on(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    pid_file = tmp_path / "sleeper.pid"
    # The hook leaves a child behind that would hang forever: the whole group must go at the timeout.
    hang = f"sleep 3600 & echo $! > {pid_file}.tmp && mv {pid_file}.tmp {pid_file}; wait"
    add_toml(root, f"""
[[hooks]]
name = "hang"
channel = "slow"
run = ["sh", "-c", {json.dumps(hang)}]
timeout_s = 20
retries = 0
""")
    daemon = Daemon(root)
    try:
        drop(root, "first", {"prompt": "", **SMALL, "seed": 1, "channel": "slow"}, media=image_bytes(1))
        wait_for(pid_file.exists, 120, "the hanging hook to start")
        sleeper = psutil.Process(int(pid_file.read_text()))

        drop(root, "second", {"prompt": "", **SMALL, "seed": 2}, media=image_bytes(2))
        wait_for(lambda: any(j["name"] == "second" and j["state"] == "done" for j in jobs(root)), 120, "second done")
        assert sleeper.is_running() and sleeper.status() != psutil.STATUS_ZOMBIE  # the queue went on meanwhile
        assert hooks_of(root, "first")["hang"]["status"] == "pending"

        hook = wait_for(lambda: hooks_of(root, "first")["hang"]["status"] == "failed" and hooks_of(root, "first")["hang"], 60, "the timeout")
        assert hook["tries"] == 1 and hook["last"]["error"] == "timed out after 20 s and was killed"
        wait_for(lambda: not sleeper.is_running() or sleeper.status() == psutil.STATUS_ZOMBIE, 10, "the hook's child killed")
    finally:
        assert daemon.stop() == 0, daemon.output()[-3000:]
    assert "hook hang for first failed 1 time(s), giving up: error: timed out after 20 s" in daemon.output()
    assert hooks_of(root, "second") == {}  # the channel filter: second is on channel "loop"
