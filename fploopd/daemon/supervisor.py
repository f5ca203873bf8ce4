"""The supervisor: one process that watches the inbox, owns the journal, hands jobs to one worker
process per device, delivers results and talks to the service manager. It survives its workers.

``tick()`` does one iteration of the loop (huey/rq style); ``run()`` repeats it until stopped.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from loguru import logger

from fploopd.daemon import deliver, outcomes
from fploopd.daemon.claim import adopt_orphans, claim, recover_claims
from fploopd.daemon.intake import Intake, start_watching
from fploopd.daemon.journal import IllegalTransition, Job, Journal
from fploopd.daemon.layout import Layout
from fploopd.daemon.service import Notifier, StopFlags, Waker
from fploopd.daemon.settings import Settings
from fploopd.daemon.worker import worker_main

PROGRESS_WRITE_S = 0.5  # progress reaches the journal at most this often (phase changes at once)
MAX_RESTART_DELAY_S = 60.0
FATAL_RESTART_DELAY_S = 60.0
SETTLE_RETRY_S = 30.0
JOURNAL_POLL_S = 1.0


@dataclass
class WorkerHandle:
    device: str
    process: BaseProcess
    conn: Connection
    ready: bool = False
    model: Any = None
    job: Job | None = None
    stop_sent: bool = False
    fatal: dict[str, Any] | None = None
    last_write: float = 0.0
    last_progress: dict[str, Any] = field(default_factory=dict)


def _progress_text(p: dict[str, Any] | None) -> str:
    if not p:
        return "starting"
    text = p.get("phase", "")
    if p.get("generations", 1) > 1:
        text += f" generation {p['generation']}/{p['generations']}"
    if p.get("sections"):
        text += f" section {p['section']}/{p['sections']}"
    if p.get("steps"):
        text += f" step {p['step']}/{p['steps']}"
    return text


class Supervisor:
    def __init__(self, settings: Settings, *, once: bool = False, notifier: Notifier | None = None) -> None:
        self.settings = settings
        self.layout = Layout(settings.root)
        self.once = once
        self.notifier = notifier or Notifier()
        self.waker = Waker()
        self.flags = StopFlags()
        self.journal = Journal(self.layout.journal, "supervisor")
        self.intake = Intake(settings, self.layout)
        self.ctx = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        self.devices: list[str] = []
        self.workers: dict[str, WorkerHandle] = {}
        self.restart_at: dict[str, float] = {}
        self.deaths: dict[str, int] = {}
        self.settle_after: dict[str, float] = {}
        self.fatal: dict[str, dict[str, Any]] = {}  # devices whose worker could not load the models
        self.observer: Any = None
        self.next_scan = 0.0
        self.scanned_since_start = False
        self.waiting_drops = 0
        self.stopping = False
        self.exit_code: int | None = None

    # --- start and stop -----------------------------------------------------------------------

    def start(self) -> None:
        for folder in (*self.layout.user_folders(), self.layout.work):  # a fresh clone or root works as is
            folder.mkdir(parents=True, exist_ok=True)
        self.recover()
        self.devices = self.settings.devices()
        if not self.once:
            self._start_workers()  # the models are ready when the first drop arrives
        self.observer = start_watching(self.settings, self.layout, self.waker.wake)
        logger.info(
            "fploopd watching {} (model {}, devices {}, {})",
            self.layout.inbox,
            self.settings.model,
            ", ".join(self.devices),
            "polling" if self.settings.poll else "native events",
        )
        self.notifier.ready(f"watching {self.layout.inbox}")

    def recover(self) -> None:
        """Start-up: finish interrupted claims, requeue interrupted jobs, finish deliveries."""
        recover_claims(self.layout, self.journal)
        for job in self.journal.jobs(("running",)):
            with logger.contextualize(job=job.id):
                logger.warning("job {} was running when the daemon stopped; it resumes from its checkpoint", job.name)
                self._retry_or_fail(job, {"kind": "error", "error": "interrupted: the daemon stopped while it ran"}, backoff=False)
        adopt_orphans(self.layout, self.journal)
        self._settle()

    def request_stop(self) -> None:
        """A stop from another thread (the Windows service): the same as a signal."""
        self.flags.request()
        self.waker.wake()

    def _begin_warm_stop(self) -> None:
        self.stopping = True
        busy = [w.job.name for w in self.workers.values() if w.job is not None]
        logger.info("stopping: {}", f"waiting for {', '.join(busy)} to reach a step boundary" if busy else "no job running")
        self.notifier.stopping("stopping" + (f": checkpointing {', '.join(busy)}" if busy else ""))
        for w in self.workers.values():
            self._send(w, ("stop", w.job.id) if w.job is not None else ("exit",))
            w.stop_sent = True

    def _cold_stop(self) -> None:
        logger.warning("second stop request: stopping at once; running jobs resume from their checkpoints next time")
        for w in self.workers.values():
            if w.process.is_alive():
                w.process.kill()
        os._exit(1)

    def close(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=5)
        for w in self.workers.values():
            if w.ready:
                self._send(w, ("exit",))
            else:
                w.process.kill()  # still loading the models: it holds nothing
        for w in self.workers.values():
            w.process.join(timeout=10)
            if w.process.is_alive():
                w.process.kill()
                w.process.join()
        self.journal.close()

    # --- the loop -----------------------------------------------------------------------------

    def run(self, install_signals: bool = True) -> int:
        if install_signals:
            self.flags.install(self.waker)
        self.start()
        try:
            while self.exit_code is None:
                self.tick()
        finally:
            self.close()
        logger.info("fploopd stopped")
        return self.exit_code

    def tick(self) -> None:
        """One iteration: signals, worker messages, intake, cancels, dispatch, delivery, wait."""
        if self.flags.requests >= 2:
            self._cold_stop()
        if self.flags.requests >= 1 and not self.stopping:
            self._begin_warm_stop()
        self.notifier.beat()
        self._read_workers()
        self._reap_workers()
        now = time.monotonic()
        if not self.stopping:
            if not self.workers and not self.restart_at and self.journal.next_due_at() is not None:
                self._start_workers()  # --once: only when there is work
            self._restart_workers(now)
            if now >= self.next_scan:
                self._scan()
                self.next_scan = now + self.settings.rescan_interval_s
            self._handle_cancels()
            self._dispatch()
        self._settle()
        self.notifier.status(self._status_text())
        self._decide_exit()
        if self.exit_code is None:
            self._wait()

    def _wait(self) -> None:
        # Commands (cancel, retry) change the journal from other processes: look at least this often.
        timeouts = [max(0.0, self.next_scan - time.monotonic()), JOURNAL_POLL_S]
        if (beat := self.notifier.next_beat_in()) is not None:
            timeouts.append(beat)
        idle = any(w.ready and w.job is None for w in self.workers.values())
        due = self.journal.next_due_at() if idle else None  # a busy or loading worker's message wakes us
        if due is not None:
            timeouts.append(max(0.0, due - time.time()))
        if self.restart_at:
            timeouts.append(max(0.0, min(self.restart_at.values()) - time.monotonic()))
        waitables: list[Any] = [self.waker.r]
        for w in self.workers.values():
            waitables += [w.conn, w.process.sentinel]
        if any(w.job is not None for w in self.workers.values()):
            timeouts.append(0.5)  # a cancel of a running job should stop it within a step or so
        woke = wait(waitables, timeout=min(timeouts) + 0.01)
        if self.waker.r in woke:
            self.waker.drain()
            # Events are hints: rescan soon, after a short pause that lets a burst of events settle.
            self.next_scan = min(self.next_scan, time.monotonic() + 0.05)

    def _decide_exit(self) -> None:
        busy = any(w.job is not None for w in self.workers.values())
        if self.stopping:
            if not busy:
                self.exit_code = 0
            return
        if not self.once or not self.scanned_since_start or busy or self.waiting_drops or self.journal.pending_moves():
            return
        queued = self.journal.jobs(("queued",))
        if not queued:
            self.exit_code = 0
        elif self.devices and set(self.fatal) >= set(self.devices):
            logger.error("no worker could load the models; {} job(s) stay queued", len(queued))
            self.exit_code = 1

    def _status_text(self) -> str:
        running = [f"{w.job.name}: {_progress_text(w.last_progress)}" for w in self.workers.values() if w.job is not None]
        if self.stopping:
            return "stopping" + (f"; {'; '.join(running)}" if running else "")
        queued = len(self.journal.jobs(("queued",)))
        text = "; ".join(running) if running else "idle"
        if self.fatal:
            text += "; cannot load the models: " + "; ".join(str(e.get("error", "")).splitlines()[0] for e in self.fatal.values())
        return text + (f"; {queued} queued" if queued else "")

    # --- intake -------------------------------------------------------------------------------

    def _scan(self) -> None:
        try:
            result = self.intake.scan()
        except OSError as exc:  # the share is gone for a moment
            logger.error("scanning {} failed: {}", self.layout.inbox, exc)
            return
        self.waiting_drops = len(result.waiting)
        for drop in result.ready:
            try:
                claim(drop, self.layout, self.journal, self.notifier.beat)
            except OSError as exc:
                # e.g. the file vanished or the share went away between the scan and the move
                logger.warning("could not claim {}: {}; trying again at the next scan", drop.sidecar, exc)
                self.waiting_drops += 1
        self.scanned_since_start = True

    # --- workers ------------------------------------------------------------------------------

    def _start_worker(self, device: str) -> None:
        parent, child = self.ctx.Pipe(duplex=True)
        process = self.ctx.Process(
            target=worker_main, args=(self.settings, device, child), name=f"fploopd-worker-{device}", daemon=True
        )
        process.start()
        child.close()
        self.workers[device] = WorkerHandle(device=device, process=process, conn=parent)
        self.restart_at.pop(device, None)
        logger.info("started worker pid {} on {}", process.pid, device)

    def _start_workers(self) -> None:
        for device in self.devices:
            self._start_worker(device)

    def _restart_workers(self, now: float) -> None:
        for device, at in list(self.restart_at.items()):
            if now >= at:
                self._start_worker(device)

    def _send(self, w: WorkerHandle, msg: tuple[Any, ...]) -> None:
        try:
            w.conn.send(msg)
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass  # it died; _reap_workers handles that

    def _read_workers(self) -> None:
        for w in list(self.workers.values()):
            try:
                while w.conn.poll():
                    self._on_message(w, w.conn.recv())
            except (EOFError, OSError):
                pass  # the process died; _reap_workers sees it

    def _on_message(self, w: WorkerHandle, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "ready":
            w.ready, w.model = True, msg[1].get("model")
            self.deaths[w.device] = 0
            self.fatal.pop(w.device, None)
            return
        if kind == "fatal":
            w.fatal = msg[1]
            logger.error("worker on {} cannot start: {}", w.device, msg[1].get("error"))
            return
        if w.job is None or msg[1] != w.job.id:
            logger.warning("ignoring {} for job {} from worker {}", kind, msg[1], w.device)
            return
        job = w.job
        with logger.contextualize(job=job.id):
            try:
                self._on_job_message(w, job, msg)
            except Exception as exc:  # noqa: BLE001 - a job's trouble (a full disk) must not stop the daemon
                logger.opt(exception=True).error("handling {} of {} failed", kind, job.name)
                w.job = None
                if self.journal.get(job.id).state == "running":
                    self._retry_or_fail(job, {"kind": "error", "error": f"{type(exc).__name__}: {exc}"})

    def _on_job_message(self, w: WorkerHandle, job: Job, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "progress":
            self._on_progress(w, msg[2])
            return
        w.job = None
        if kind == "done":
            self._on_done(job, w, msg[2])
        elif kind == "failed":
            self._on_failed(job, msg[2], input_fault=msg[3])
        elif kind == "stopped":
            self._on_stopped(job)

    def _on_progress(self, w: WorkerHandle, p: dict[str, Any]) -> None:
        now = time.monotonic()
        changed = (p.get("phase"), p.get("section"), p.get("generation")) != (
            w.last_progress.get("phase"),
            w.last_progress.get("section"),
            w.last_progress.get("generation"),
        )
        w.last_progress = p
        if changed or now - w.last_write >= PROGRESS_WRITE_S:
            w.last_write = now
            assert w.job is not None
            self.journal.set_progress(w.job.id, p)

    def _reap_workers(self) -> None:
        for device, w in list(self.workers.items()):
            if w.process.is_alive():
                continue
            w.process.join()
            code = w.process.exitcode
            del self.workers[device]
            w.conn.close()
            if w.job is not None:
                job = w.job
                how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                with logger.contextualize(job=job.id):
                    logger.error("the worker on {} died ({}) while running {}", device, how, job.name)
                    self._retry_or_fail(job, {"kind": "error", "error": f"the worker process on {device} died ({how})"})
            if self.stopping:
                continue
            if w.fatal is not None:
                self.fatal[device] = w.fatal
                delay = FATAL_RESTART_DELAY_S  # the models will not load: try again now and then
            else:
                # A worker that keeps dying is restarted ever more slowly.
                deaths = self.deaths[device] = self.deaths.get(device, 0) + 1
                delay = min(MAX_RESTART_DELAY_S, 0.5 * 2 ** (deaths - 1)) if deaths > 1 else 0.0
            if code != 0 or w.fatal is not None:
                logger.info("restarting the worker on {} in {:.0f} s", device, delay)
            self.restart_at[device] = time.monotonic() + delay

    # --- job outcomes -------------------------------------------------------------------------

    def _dispatch(self) -> None:
        for w in self.workers.values():
            if not w.ready or w.job is not None or not w.process.is_alive():
                continue
            job = self.journal.claim_next(worker=f"{os.getpid()}:{w.device}")
            if job is None:
                return
            missing = [i["name"] for i in job.inputs if not (self.layout.inputs_dir(job.id) / i["name"]).exists()]
            if missing:
                self._fail(job, {"kind": "error", "error": f"inputs missing from the work dir: {', '.join(missing)}"})
                continue
            assert job.spec is not None
            media = {i["field"]: str(self.layout.inputs_dir(job.id) / i["name"]) for i in job.inputs if i["field"] in ("image", "video", "head", "tail")}
            payload = {
                "id": job.id,
                "name": job.name,
                "spec": job.spec,
                "seeds": job.seeds,
                "inputs": media,
                "out_dir": str(self.layout.out_dir(job.id)),
                "work_dir": str(self.layout.checkpoint_dir(job.id)),
            }
            w.job, w.stop_sent, w.last_progress, w.last_write = job, False, {}, 0.0
            with logger.contextualize(job=job.id):
                logger.info("running {} ({}) on {}, attempt {}", job.name, job.pipeline, w.device, job.attempts + 1)
            self._send(w, ("job", payload))

    def _on_done(self, job: Job, w: WorkerHandle, result: dict[str, Any]) -> None:
        outcomes.finished(job, self.layout, self.journal, result, w.model)
        self._settle()

    def _on_failed(self, job: Job, error: dict[str, Any], input_fault: bool) -> None:
        if input_fault:  # never retried
            logger.error("{} failed: {}", job.name, error.get("error"))
            self._fail(job, error)
        else:
            self._retry_or_fail(job, error)

    def _on_stopped(self, job: Job) -> None:
        outcomes.stopped(job, self.layout, self.journal)
        self._settle()

    def _fail(self, job: Job, error: dict[str, Any]) -> None:
        outcomes.failed(job, self.layout, self.journal, error)
        self._settle()

    def _retry_or_fail(self, job: Job, error: dict[str, Any], backoff: bool = True) -> None:
        outcomes.retry_or_fail(job, self.layout, self.journal, self.settings, error, backoff)
        self._settle()

    # --- cancels ------------------------------------------------------------------------------

    def _handle_cancels(self) -> None:
        for w in self.workers.values():
            if w.job is not None and not w.stop_sent and self.journal.get(w.job.id).cancel_requested:
                logger.info("cancel requested for {}: stopping at the next step", w.job.name)
                self._send(w, ("stop", w.job.id))
                w.stop_sent = True
        for job in self.journal.jobs(("queued",)):
            if job.cancel_requested:  # flagged while it ran, then requeued by a crash
                with contextlib.suppress(IllegalTransition):
                    outcomes.cancel_queued(job, self.layout, self.journal)

    def _settle(self) -> None:
        """Finish recorded file moves; one that fails (a share gone) is tried again later."""
        now = time.monotonic()
        for job in self.journal.pending_moves():
            if self.settle_after.get(job.id, 0.0) > now:
                continue
            try:
                deliver.settle(job, self.layout, self.journal, self.notifier.beat)
            except OSError as exc:
                logger.error("delivering {} failed: {}; trying again in {:.0f} s", job.name, exc, SETTLE_RETRY_S)
                self.settle_after[job.id] = now + SETTLE_RETRY_S


def run_daemon(
    settings: Settings,
    *,
    once: bool = False,
    install_signals: bool = True,
    started: Callable[[Supervisor], None] | None = None,
) -> int:
    """The ``fploopd run`` entry point (and the Windows service's): lock the root, run the loop.

    ``started`` receives the supervisor before the loop begins (the Windows service keeps it to
    call ``request_stop`` from its control thread).
    """
    from fploopd.daemon.service import RootLock, RootLockedError

    layout = Layout(settings.root)
    lock = RootLock(layout.lock)
    if not lock.acquire():
        raise RootLockedError(f"another fploopd daemon (pid {lock.holder()}) is running on {settings.root}", file=str(layout.lock))
    try:
        supervisor = Supervisor(settings, once=once)
        if started is not None:
            started(supervisor)
        return supervisor.run(install_signals=install_signals)
    finally:
        lock.release()

