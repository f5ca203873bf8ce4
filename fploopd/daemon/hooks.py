"""Delivery hooks (``[[hooks]]``): after a job's files are in place, run a program or POST its
manifest. Runs live in the journal (``hookstore``): at least once, never again after a success,
retried with backoff up to the hook's limit, then left ``failed`` for `fploopd status` to show.

``HookRunner`` works off the supervisor's thread: one thread picks due runs from its own journal
connection and runs each in a thread of its own (a few at a time), so a slow or hanging hook never
holds up the queue or the other hooks; a command that outlives its timeout is killed with its
children.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger

from fploopd.daemon import hookstore
from fploopd.daemon.hooksettings import OBS_PASSWORD_ENV, PLACEHOLDERS, HookSettings
from fploopd.daemon.journal import Job, JobState, Journal
from fploopd.daemon.layout import Layout
from fploopd.pipelines.manifest import MANIFEST_FILE

MAX_AT_ONCE = 4  # hook runs in flight together
OUTPUT_KEPT = 2000  # characters of a command's output (or a response) kept in the journal and log
SIGNATURE_HEADER = "X-Fploopd-Signature"
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")


@dataclass(frozen=True)
class Outcome:
    ok: bool
    detail: dict[str, Any]  # exit_code or http_status, error, output: what the journal keeps


def delivered_folder(layout: Layout, job: Job) -> Path | None:
    """Where the job's files are: outbox/<name>/ when done, failed/<name>/ when failed or cancelled."""
    if job.delivery is None:
        return None
    where = job.delivery.delivered_to("outbox") if job.state is JobState.DONE else job.delivery.moves[0].dst
    return layout.abs(where) if where else None


def document_of(layout: Layout, job: Job) -> Path | None:
    """The file a hook is about: the manifest of a done job, the error.json of a failed or cancelled one."""
    folder = delivered_folder(layout, job)
    if folder is None:
        return None
    if job.state is JobState.DONE:
        return folder / MANIFEST_FILE
    write = job.delivery.write if job.delivery is not None else None
    return folder / Path(write.path).name if write is not None else None


def placeholders(layout: Layout, job: Job) -> dict[str, str]:
    folder, document = delivered_folder(layout, job), document_of(layout, job)
    return {
        "manifest": str(document or ""),
        "job": job.name,
        "id": job.id,
        "state": job.state.value,
        "outbox": str(folder or ""),
    }


def command(hook: HookSettings, values: dict[str, str]) -> list[str]:
    """The hook's program and arguments with the placeholders filled in (no shell ever sees them)."""
    assert hook.run is not None
    return [_PLACEHOLDER.sub(lambda m: values[m.group(1)], arg) for arg in hook.run]


def _tail(text: str | bytes | None) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return (text or "")[-OUTPUT_KEPT:]


def run_command(hook: HookSettings, argv: list[str], cwd: Path, started: Any = None) -> Outcome:
    """Run ``argv`` in its own process group; past ``timeout_s`` the group is killed. ``started``
    receives the process (so a stopping daemon can end it)."""
    try:
        proc = subprocess.Popen(
            argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, env={k: v for k, v in os.environ.items() if k != OBS_PASSWORD_ENV},
        )
    except OSError as exc:
        return Outcome(False, {"error": f"cannot start {argv[0]}: {exc.strerror or exc}"})
    if started is not None:
        started(proc)
    try:
        output, _ = proc.communicate(timeout=hook.timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        output, _ = proc.communicate()
        return Outcome(False, {"error": f"timed out after {hook.timeout_s:g} s and was killed", "output": _tail(output)})
    detail = {"exit_code": proc.returncode, "output": _tail(output)}
    if proc.returncode != 0:
        detail["error"] = f"exit code {proc.returncode}" if proc.returncode > 0 else f"killed by signal {-proc.returncode}"
    return Outcome(proc.returncode == 0, detail)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except OSError:
        pass  # it ended just now


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not a place to send the manifest (it could lead to another machine)."""

    def redirect_request(self, *args: Any) -> None:
        return None


# No proxies (a loopback url goes to this machine, never through a proxy) and no redirects.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def post(hook: HookSettings, body: bytes, key: str, state: str) -> Outcome:
    """POST ``body`` (JSON) to the hook's url; any 2xx answer is a success."""
    assert hook.url is not None
    headers = {"Content-Type": "application/json", "Idempotency-Key": key, "X-Fploopd-State": state}
    if hook.secret:
        headers[SIGNATURE_HEADER] = "sha256=" + hmac.new(hook.secret.encode(), body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(hook.url, data=body, headers=headers, method="POST")
    try:
        with _OPENER.open(request, timeout=hook.timeout_s) as response:
            return Outcome(True, {"http_status": response.status, "output": _tail(response.read(OUTPUT_KEPT))})
    except urllib.error.HTTPError as exc:
        return Outcome(False, {"http_status": exc.code, "error": f"HTTP {exc.code} {exc.reason}", "output": _tail(exc.read(OUTPUT_KEPT))})
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return Outcome(False, {"error": f"cannot reach {hook.url}: {reason}"})


class HookRunner:
    """Runs the journal's due hook runs, each in its own thread, and records every try."""

    def __init__(self, layout: Layout, hooks: dict[str, HookSettings], journal_url: str = "") -> None:
        self.layout = layout
        self.hooks = hooks
        self.journal_url = journal_url  # "" = the root's SQLite journal
        self.journal: Journal | None = None
        self.lock = threading.Lock()  # one sqlite connection, used by several threads
        self.wake = threading.Event()
        self.stopping = False
        self.in_flight: dict[tuple[str, str, float], subprocess.Popen | None] = {}
        self.thread = threading.Thread(target=self._loop, name="fploopd-hooks", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        """Stop: commands still running are killed; their runs stay pending and run again next start."""
        self.stopping = True
        self.wake.set()
        with self.lock:
            procs = [p for p in self.in_flight.values() if p is not None]
        for proc in procs:
            _kill_group(proc)
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        with self.lock:
            if self.journal is not None:
                self.journal.close()

    # --- the runner's thread ------------------------------------------------------------------

    def _loop(self) -> None:
        while not self.stopping:
            try:
                if self.journal is None:  # opened here: a journal busy for a moment must not stop the daemon's start
                    from fploopd.daemon.stores import open_store

                    self.journal = open_store(self.layout, self.journal_url, "hooks")
                timeout = self._start_due()
            except Exception as exc:  # noqa: BLE001 - a busy or full journal: look again soon
                logger.error("hooks: cannot read the journal: {}", exc)
                timeout = 5.0
            self.wake.wait(timeout=timeout)
            self.wake.clear()

    def _start_due(self) -> float:
        """Start the due runs there is room for; returns how long to wait before looking again
        (a run that ends wakes the loop at once)."""
        assert self.journal is not None
        with self.lock:
            now = time.time()
            waiting = [r for r in hookstore.pending_runs(self.journal) if self._run_key(r) not in self.in_flight]
            due = [r for r in waiting if r.next_at <= now]
            for run in due[: max(0, MAX_AT_ONCE - len(self.in_flight))]:
                self.in_flight[self._run_key(run)] = None
                threading.Thread(target=self._run, args=(run,), name=f"fploopd-hook-{run.hook}", daemon=True).start()
        later = [r.next_at - now for r in waiting if r.next_at > now]
        return min([60.0, *later])

    @staticmethod
    def _run_key(run: hookstore.HookRun) -> tuple[str, str, float]:
        return (run.job_id, run.hook, run.delivered_at)

    def _run(self, run: hookstore.HookRun) -> None:
        key = self._run_key(run)
        try:
            self._run_once(run)
        except Exception as exc:  # noqa: BLE001 - never lose the thread silently
            if not self.stopping:  # else the journal was closed under it: the run stays pending
                logger.opt(exception=exc).error("hook {} for job {}: {}", run.hook, run.job_id, exc)
                self._count_failure(run, f"{type(exc).__name__}: {exc}")
        finally:
            with self.lock:
                self.in_flight.pop(key, None)
            self.wake.set()

    def _count_failure(self, run: hookstore.HookRun, error: str) -> None:
        """A try that broke before it could be recorded still counts, so the run backs off."""
        hook = self.hooks.get(run.hook)
        limit = 1 + (hook.retries if hook is not None else 0)
        status = "failed" if run.tries + 1 >= limit else "pending"
        next_at = time.time() + (hook.backoff(run.tries + 1) if hook is not None else 0.0)
        try:
            with self.lock:
                assert self.journal is not None
                hookstore.record_try(self.journal, run, {"ok": False, "error": error, "at": round(time.time(), 3)}, status, next_at)
        except Exception as exc:  # noqa: BLE001 - the journal itself is in trouble: the loop reports it
            logger.error("hook {} for job {}: cannot record the failure: {}", run.hook, run.job_id, exc)

    def _run_once(self, run: hookstore.HookRun) -> None:
        assert self.journal is not None
        hook = self.hooks.get(run.hook)
        with self.lock:
            job = self.journal.get(run.job_id)
        with logger.contextualize(job=job.id):
            if hook is None:
                self._record(run, job, None, Outcome(False, {"error": f"no hook named {run.hook!r} in fploopd.toml any more"}))
                return
            logger.info("hook {} for {} ({}): try {} of {}: {}", run.hook, job.name, run.state, run.tries + 1, hook.retries + 1, hook.describe())
            outcome = self._execute(hook, run, job)
            if self.stopping:
                return  # killed by the stop: it stays pending and runs again after the restart
            self._record(run, job, hook, outcome)

    def _execute(self, hook: HookSettings, run: hookstore.HookRun, job: Job) -> Outcome:
        if hook.run is not None:
            argv = command(hook, placeholders(self.layout, job))
            return run_command(hook, argv, self.layout.root, started=lambda p: self._started(run, p))
        document = document_of(self.layout, job)
        try:
            body = document.read_bytes() if document is not None else b"{}"
        except OSError as exc:
            return Outcome(False, {"error": f"cannot read {document}: {exc.strerror or exc}"})
        return post(hook, body, run.key, run.state)

    def _started(self, run: hookstore.HookRun, proc: subprocess.Popen) -> None:
        with self.lock:
            self.in_flight[self._run_key(run)] = proc
        if self.stopping:
            _kill_group(proc)

    def _record(self, run: hookstore.HookRun, job: Job, hook: HookSettings | None, outcome: Outcome) -> None:
        assert self.journal is not None
        tries = run.tries + 1
        limit = 1 + (hook.retries if hook is not None else 0)
        detail = {"ok": outcome.ok, **outcome.detail, "at": round(time.time(), 3)}
        said = "; ".join(f"{k}: {v}" for k, v in outcome.detail.items() if k != "output" and v is not None)
        output = (outcome.detail.get("output") or "").strip()
        if outcome.ok:
            status, next_at = "done", time.time()
            logger.info("hook {} for {} done ({}){}", run.hook, job.name, said, f"; output: {output}" if output else "")
        elif tries >= limit:
            status, next_at = "failed", time.time()
            logger.error(
                "hook {} for {} failed {} time(s), giving up: {}{}", run.hook, job.name, tries, said,
                f"; output: {output}" if output else "",
            )
        else:
            assert hook is not None
            status, next_at = "pending", time.time() + hook.backoff(tries)
            logger.warning(
                "hook {} for {} failed ({}){}; try {} of {} in {:.0f} s", run.hook, job.name, said,
                f"; output: {output}" if output else "", tries + 1, limit, next_at - time.time(),
            )
        with self.lock:
            hookstore.record_try(self.journal, run, detail, status, next_at)
