"""Helpers for the daemon tests: a root used as a user would, the real ``fploopd`` in real
processes, and an inventory that says where every dropped file is.

The tests run the real pipeline on the tiny model. FPLOOPD_TEST_FAKE_PIPELINE=1 (set by a
developer, never by CI) swaps in tests/fakepipe/ to check the daemon's mechanics alone, fast.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from PIL import Image, ImageDraw

from fploopd.daemon.rootinit import init_root

PY = sys.executable
FAKE = os.environ.get("FPLOOPD_TEST_FAKE_PIPELINE") == "1"
# FPLOOPD_TEST_JOURNAL=pg: every root made here gets a fresh PostgreSQL journal (tests/pg_util.py).
PG = os.environ.get("FPLOOPD_TEST_JOURNAL") == "pg"
FAKE_DIR = Path(__file__).parent / "fakepipe"
# Tiny jobs: 3 sections of window 2 at resolution 128 (a loop needs main_sections x window >= 4).
SMALL: dict[str, Any] = {"resolution": 128, "window": 2, "steps": 2, "main_sections": 2, "connection_sections": 1, "loop_count": 2}
TEST_SETTINGS: dict[str, Any] = {
    "model": "tiny",
    "device": "cpu",
    "settle_s": 0.2,
    "rescan_interval_s": 0.2,
    "grace_s": 2.0,
    "backoff_base_s": 0.2,
    "backoff_max_s": 1.0,
    "max_attempts": 3,
    "log_level": "DEBUG",
    # The tests' jobs are a few MB: they must not pause on a machine whose disk is merely fullish.
    "min_free_mb": 16,
}


def make_root(tmp_path: Path, **settings: Any) -> Path:
    root = tmp_path / "root"
    init_root(root)
    if PG and "journal" not in settings:
        import pg_util

        settings = {"journal": pg_util.shared().new_database(), **settings}
    values = {**TEST_SETTINGS, **settings}
    lines = [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    (root / "fploopd.toml").write_text("\n".join(lines) + "\n")
    return root


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("FPLOOPD_") and k != "NOTIFY_SOCKET"}
    if FAKE:
        out["FPLOOPD_TEST_FAKE_PIPELINE"] = "1"
        out["PYTHONPATH"] = os.pathsep.join(p for p in (str(FAKE_DIR), out.get("PYTHONPATH", "")) if p)
    out.update(extra)
    return out


def image_bytes(hue: int = 0, size: tuple[int, int] = (96, 64)) -> bytes:
    """A small PNG with structure and colour."""
    img = Image.new("RGB", size, ((40 + hue * 37) % 256, 90, 160))
    d = ImageDraw.Draw(img)
    d.ellipse((10, 8, 50, 48), fill=(250, 200, (hue * 53) % 256))
    d.rectangle((55, 20, 90, 60), fill=(30, (hue * 91) % 256, 40))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def drop(root: Path, stem: str, sidecar: dict[str, Any] | None = None, *, folder: str = "loop", media: bytes | None = None) -> dict[str, bytes]:
    """Media first, the sidecar last (as a good producer does); returns {file name: bytes}."""
    where = root / "inbox" / folder if folder else root / "inbox"
    files: dict[str, bytes] = {}
    if media is not None:
        files[f"{stem}.png"] = media
        write_atomic(where / f"{stem}.png", media)
    content = json.dumps(sidecar if sidecar is not None else {"prompt": "a test", **SMALL}).encode()
    files[f"{stem}.json"] = content
    write_atomic(where / f"{stem}.json", content)
    return files


def fploopd(*args: str | Path, root: Path, environ: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    cmd = [PY, "-m", "fploopd", *map(str, args), "--root", str(root)]
    # Its own session: a test crash (SIGKILL to the process group) must not reach pytest.
    return subprocess.run(cmd, env=environ or env(), capture_output=True, text=True, timeout=timeout, start_new_session=True, check=False)


def run_once(root: Path, environ: dict[str, str] | None = None, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    return fploopd("run", "--once", root=root, environ=environ, timeout=timeout)


class Daemon:
    """``fploopd run`` in its own process group (so a test crash kills just it)."""

    def __init__(self, root: Path, *args: str, environ: dict[str, str] | None = None, log_dir: Path | None = None) -> None:
        self.log = (log_dir or root.parent) / f"daemon-{time.monotonic_ns()}.log"
        self._out = open(self.log, "w")  # noqa: SIM115 - open for the daemon's life; closed by wait()
        self.proc = subprocess.Popen(
            [PY, "-m", "fploopd", "run", "--root", str(root), *args],
            env=environ or env(),
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._out.close()

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        return self.wait()

    def worker(self) -> psutil.Process:
        """The GPU worker process (not multiprocessing's resource tracker)."""
        (worker,) = [c for c in psutil.Process(self.proc.pid).children() if "resource_tracker" not in " ".join(c.cmdline())]
        return worker

    def kill_group(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.wait()


def status(root: Path) -> list[dict[str, Any]]:
    """``fploopd status --json``, the real command."""
    result = fploopd("status", "--json", root=root)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def status_is_true(root: Path) -> list[dict[str, Any]]:
    """``fploopd status --json``, checked against the folders: once a job's files are delivered they
    stay put, so every delivered job must be exactly where status says."""
    views = status(root)
    waiting = [v for v in views if v["state"] == "waiting"]  # drops in the inbox, not jobs yet
    assert all(v["id"] is None and v["waiting_for"] and v["sidecar"].startswith("inbox/") for v in waiting), waiting
    views = [v for v in views if v["state"] != "waiting"]
    assert len({v["id"] for v in views}) == len(views) and len({v["name"] for v in views}) == len(views)
    for v in views:
        assert v["state"] in ("queued", "running", "done", "failed", "cancelled")
        assert {"id", "name", "pipeline", "state", "attempts", "progress", "error", "outputs"} <= set(v)
        if not v["delivered"] or v["state"] in ("queued", "running"):
            continue  # files may be moving right now
        assert Path(v["location"]["inputs"]).is_dir(), v
        if v["state"] == "done":
            assert v["error"] is None and v["outputs"] and all(Path(o["path"]).is_file() for o in v["outputs"]), v
        else:
            assert v["error"]["kind"] and (Path(v["location"]["inputs"]) / "error.json").is_file(), v
    return views


def jobs(root: Path) -> list[dict[str, Any]]:
    """The journal's rows, read directly (fast, for polling)."""
    url = journal_of(root)
    if url:
        import pg_util

        try:
            rows = pg_util.rows(url, "SELECT * FROM jobs ORDER BY created_at")
        except Exception:  # noqa: BLE001 - the schema is not there yet
            return []
        return [_decoded(r) for r in rows]
    path = root / ".fploopd" / "journal.sqlite3"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    db.row_factory = sqlite3.Row
    try:
        rows = [dict(r) for r in db.execute("SELECT * FROM jobs ORDER BY created_at")]
    except sqlite3.OperationalError:
        return []  # the schema is not there yet
    finally:
        db.close()
    return [_decoded(r) for r in rows]


def _decoded(r: dict[str, Any]) -> dict[str, Any]:
    for key in ("progress", "error", "outputs", "inputs", "delivery", "seeds", "spec"):
        if r[key] is not None:
            r[key] = json.loads(r[key])
    return r


def journal_of(root: Path) -> str:
    """The root's PostgreSQL journal URL, or "" for its SQLite file."""
    from fploopd.daemon.stores import journal_url

    return journal_url(root)


def wait_for(predicate: Callable[[], Any], timeout: float = 60, what: str = "condition", interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def copies(root: Path, name: str, data: bytes) -> list[str]:
    """Every place a file ``name`` with exactly these bytes is, under the root."""
    found = []
    for path in root.rglob(name):
        if "profiles" in path.relative_to(root).parts or path.is_symlink() or not path.is_file():
            continue
        if path.read_bytes() == data:
            found.append(path.relative_to(root).as_posix())
    return sorted(found)


def assert_each_input_once(root: Path, dropped: dict[str, bytes]) -> dict[str, str]:
    """Every dropped file is in exactly one place (inbox, work dir, archive or failed); returns where."""
    where = {}
    for name, data in dropped.items():
        places = copies(root, name, data)
        assert len(places) == 1, f"{name} is in {len(places)} places: {places}"
        where[name] = places[0]
    return where


def outbox_jobs(root: Path) -> list[str]:
    """The job folders in outbox/ (outbox/latest/ holds the channels' newest loops, no job)."""
    return sorted(p.name for p in (root / "outbox").iterdir() if not p.name.startswith(".") and p.name != "latest")


class Clock:
    """A clock the test moves by hand (``clock.t += 5``), for stability and grace periods."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@contextlib.contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A real small file system (tmpfs) mounted on ``folder``; the test is skipped where mounting
    is not allowed (it needs root with CAP_SYS_ADMIN)."""
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=False, capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
