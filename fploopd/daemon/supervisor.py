"""The supervisor: one process that watches the inbox, owns the journal, hands jobs to one worker
process per device, delivers results and talks to the service manager. It survives its workers,
and no drop, job or worker can stop its loop.

``tick()`` does one iteration of the loop (huey/rq style); ``run()`` repeats it until stopped.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from typing import Any

from loguru import logger
from pydantic import ValidationError

from fploopd import __version__
from fploopd.daemon import deliver, outcomes
from fploopd.daemon import messages as m
from fploopd.daemon.claim import Drop, adopt_orphans, finish_stale_claims, recover_claims
from fploopd.daemon.followup import FollowUp
from fploopd.daemon.intake import Intake, Waiting, start_watching
from fploopd.daemon.journal import IllegalTransition, Job, JobState, JournalAway, LeaseLost
from fploopd.daemon.layout import Layout
from fploopd.daemon.loras import LoraAffinity, job_loras, lora_folders, lora_set
from fploopd.daemon.metrics import DaemonMetrics
from fploopd.daemon.names import display
from fploopd.daemon.progressfiles import ProgressFiles
from fploopd.daemon.recover import check_root_journal
from fploopd.daemon.service import Notifier, StopFlags, Waker
from fploopd.daemon.settings import Settings
from fploopd.daemon.statusfiles import StatusFiles
from fploopd.daemon.stores import is_postgres, open_store
from fploopd.daemon.workerpool import WorkerHandle, WorkerPool
from fploopd.errors import ErrorRecord, FploopdError, InputError
from fploopd.pipelines.progress import progress_text
from fploopd.spec import MEDIA_FIELD_NAMES, JobSpec

PROGRESS_WRITE_S = 0.5  # progress reaches the journal at most this often (phase changes at once)
SETTLE_RETRY_S = 30.0
JOURNAL_POLL_S = 1.0
PUBLISH_S = 5.0  # the daemon's own state (and its heartbeat) reaches the journal at least this often
ERROR_PAUSE_S = 1.0  # after an unexpected error in the loop, before the next iteration
MIB = 1024 * 1024


class SpecError(FploopdError):
    """A recorded spec this version cannot read (written by another version): retrying cannot help."""

    kind = "spec"


def recorded_spec(values: dict[str, Any]) -> JobSpec:
    """The journal's spec of a job as the model the worker runs. Validated at intake already, so
    only a spec recorded by another fploopd version fails here: with SpecError, saying what to do."""
    try:
        return JobSpec.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in exc.errors()[:5])
        raise SpecError(
            f"the job's recorded settings cannot be read by fploopd {__version__} ({problems}); drop the job again"
        ) from None


class Supervisor:
    def __init__(self, settings: Settings, *, once: bool = False, notifier: Notifier | None = None) -> None:
        self.settings = settings
        self.layout = Layout(settings.root)
        self.once = once
        self.notifier = notifier or Notifier()
        self.waker = Waker()
        self.flags = StopFlags()
        if not is_postgres(settings.journal):
            check_root_journal(self.layout)  # a lost journal must not mean a fresh start
        self.journal = open_store(
            self.layout, settings.journal, "supervisor", check=True, host=settings.host, lease_s=settings.lease_s
        )
        self.next_lease = 0.0  # several hosts: when the leases are renewed (and others' expired) next
        self.away_logged = False
        self.intake = Intake(settings, self.layout)
        self.affinity = LoraAffinity()
        self.followup = FollowUp(settings, self.layout)  # latest slots, OBS, delivery hooks
        self.devices: list[str] = []
        self.pool = WorkerPool(settings, on_restart=lambda device: self.metrics.worker_restarted(device))
        # Workers that died holding a job, their exit codes: the job's fate is still to record.
        self.died_with_jobs: collections.deque[tuple[WorkerHandle, int | None]] = collections.deque()
        self.settle_after: dict[str, float] = {}
        self.observer: Any = None
        self.next_scan = 0.0
        self.scanned_since_start = False
        self.waiting: list[Waiting] = []
        self.held_since: dict[str, float] = {}
        self.low_space: str | None = None  # why intake and dispatch are paused
        self.started_at = time.time()
        self.next_publish = 0.0
        self.published: tuple[Any, ...] | None = None  # (workers, waiting, low_space, stopping) last written
        self.last_error: str | None = None
        self.stopping = False
        self.exit_code: int | None = None
        self.metrics = DaemonMetrics(self.layout, settings.journal)
        self.progress_files = ProgressFiles(self.layout, self.metrics.section_done)
        self.status_files = StatusFiles(self.layout, settings.journal)
        # For /healthz, read by the web thread: (monotonic time of the last tick, devices whose
        # worker is ready and alive). Replaced whole each tick, never changed in place.
        self.health: tuple[float, tuple[str, ...]] = (time.monotonic(), ())

    # --- start and stop -----------------------------------------------------------------------

    def start(self) -> None:
        for folder in (*self.layout.user_folders(), self.layout.work):  # a fresh clone or root works as is
            folder.mkdir(parents=True, exist_ok=True)
        self.recover()
        self.followup.start()
        self.devices = self.settings.devices()
        self._check_model()
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
        self._publish(force=True)
        self.status_files.start()
        self.notifier.ready(f"watching {self.layout.inbox}")

    def _check_model(self) -> None:
        """Say at once when the weights cannot be found, not only in a worker's log: jobs would wait."""
        from fploopd.engine.random_source import WARNING, is_random

        if is_random(self.settings.model):
            logger.warning("model {}: {}", self.settings.model, WARNING)
            return
        if self.settings.model == "tiny" or self.settings.allow_download:
            return  # the tiny family is built by the worker; a download is the worker's to try
        from fploopd.engine.sources import resolve

        try:
            resolve(self.settings.model)
        except FploopdError as exc:
            logger.error("the models cannot be loaded, so jobs will wait in the queue until they can:\n{}", exc.message)
            self.pool.fatal = {d: exc.record() for d in self.devices}

    def recover(self) -> None:
        """Start-up: finish interrupted claims, requeue interrupted jobs, finish deliveries."""
        recover_claims(self.layout, self.journal)
        for job in self.journal.jobs((JobState.RUNNING,)):
            if self.journal.multi_host and job.host != self.settings.host:
                continue  # another host's run: it keeps it while it renews the lease
            with logger.contextualize(job=job.id):
                logger.warning("job {} was running when the daemon stopped; it resumes from its checkpoint", job.name)
                outcomes.interrupted(job, self.layout, self.journal, "interrupted: the daemon stopped while it ran")
        adopt_orphans(self.layout, self.journal)
        self._settle()
        self.progress_files.sweep(self.journal)  # a crash's leftovers: no job runs yet

    def request_stop(self) -> None:
        """A stop from another thread (the Windows service): the same as a signal."""
        self.flags.request()
        self.waker.wake()

    def _begin_warm_stop(self) -> None:
        self.stopping = True
        busy = [w.job.name for w in self.pool if w.job is not None]
        logger.info("stopping: {}", f"waiting for {', '.join(busy)} to reach a step boundary" if busy else "no job running")
        self.notifier.stopping("stopping" + (f": checkpointing {', '.join(busy)}" if busy else ""))
        for w in self.pool:
            w.send(m.StopJob(w.job.id) if w.job is not None else m.Exit())
            w.stop_sent = True

    def _cold_stop(self) -> None:
        logger.warning("second stop request: stopping at once; running jobs resume from their checkpoints next time")
        self.pool.kill()
        os._exit(1)

    def close(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=5)
        self.pool.close()
        self.followup.close()
        with contextlib.suppress(Exception):  # a full disk: status then finds a stale heartbeat instead
            self.journal.set_waiting([])
            self.journal.set_daemon(self._daemon_key("supervisor"), {**self._supervisor_state(), "stopped": True})
        if self.status_files.thread.is_alive():
            self.status_files.stop()  # a last page that says the daemon stopped
        self.journal.close()

    # --- the loop -----------------------------------------------------------------------------

    def run(self, install_signals: bool = True) -> int:
        if install_signals:
            self.flags.install(self.waker)
        self.start()
        try:
            while self.exit_code is None:
                try:
                    self.tick()
                except JournalAway as exc:  # the database is away: no new work; the workers go on
                    self._journal_away(exc)
                except Exception as exc:  # noqa: BLE001 - e.g. the journal's disk is full: wait, go on
                    self._loop_error(exc)
        finally:
            self.close()
        logger.info("fploopd stopped")
        return self.exit_code

    def _loop_error(self, exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}"
        if text != self.last_error:  # once per kind of trouble, not every second
            logger.opt(exception=exc).error("the daemon's loop hit an error; it goes on: {}", text)
            self.last_error = text
        time.sleep(ERROR_PAUSE_S)

    def _journal_away(self, exc: JournalAway) -> None:
        if not self.away_logged:
            busy = [w.job.name for w in self.pool if w.job is not None]
            logger.error(
                "{}: no new jobs until it is back{}", exc.message, f"; {', '.join(busy)} go on running" if busy else ""
            )
            self.away_logged = True
        self.notifier.status(f"journal database away: {exc.message}")
        time.sleep(ERROR_PAUSE_S / 2)

    def _keep_leases(self) -> None:
        """Several hosts: renew the leases of the runs held here; requeue runs whose host stopped
        renewing (they resume from their checkpoints wherever they are taken); finish claims a dead
        host left halfway. A run whose lease was lost is stopped, and its result will be discarded."""
        now = time.monotonic()
        if not self.journal.multi_host or now < self.next_lease:
            return
        self.next_lease = now + self.settings.lease_s / 4
        held = {w.job.id: w for w in self.pool if w.job is not None and not w.lost}
        for job_id in self.journal.renew([(jid, w.job.fence) for jid, w in held.items() if w.job is not None]):
            w = held[job_id]
            assert w.job is not None
            logger.error(
                "{} lost its lease (this host did not renew it within lease_s = {:g} s): it is stopped here and what it makes is discarded",
                w.job.name, self.settings.lease_s,
            )
            w.lost = True
            if not w.stop_sent:
                w.send(m.StopJob(w.job.id))
                w.stop_sent = True
        for job in self.journal.expire_leases():
            logger.warning("{} was running on {}, which stopped renewing its lease: queued again, to resume from its checkpoint", job.name, job.host)
        finish_stale_claims(self.layout, self.journal)

    def tick(self) -> None:
        """One iteration: signals, worker messages, intake, cancels, dispatch, delivery, wait."""
        if self.flags.requests >= 2:
            self._cold_stop()
        if self.flags.requests >= 1 and not self.stopping:
            self._begin_warm_stop()
        self.notifier.beat()
        self._read_workers()
        self.away_logged = False  # the journal answered
        self._reap_workers()
        self._keep_leases()
        now = time.monotonic()
        self._watch_workers(now)
        if not self.stopping:
            self._check_space()
            if not self.pool.workers and not self.pool.restart_at and self.journal.next_due_at() is not None:
                self._start_workers()  # --once: only when there is work
            self.pool.start_due(now)
            if now >= self.next_scan:
                self._scan()
                self.next_scan = now + self.settings.rescan_interval_s
            self._handle_cancels()
            if self.low_space is None:
                self._dispatch()
        self._settle()
        self.followup.tick(self.journal)
        self._publish()
        self.notifier.status(self._status_text())
        self._decide_exit()
        self.last_error = None
        alive = tuple(d for d, w in self.pool.workers.items() if w.ready and not w.silent and w.process.is_alive())
        self.health = (time.monotonic(), alive)
        if self.exit_code is None:
            self._wait()

    def _wait(self) -> None:
        # Commands (cancel, retry) change the journal from other processes: look at least this often.
        timeouts = [max(0.0, self.next_scan - time.monotonic()), JOURNAL_POLL_S]
        if (beat := self.notifier.next_beat_in()) is not None:
            timeouts.append(beat)
        idle = any(w.available for w in self.pool)
        due = self.journal.next_due_at() if idle else None  # a busy or loading worker's message wakes us
        if due is not None:
            timeouts.append(max(0.0, due - time.time()))
        if (restart := self.pool.next_restart_in(time.monotonic())) is not None:
            timeouts.append(restart)
        waitables: list[Any] = [self.waker.r]
        for w in self.pool:
            waitables += [w.conn, w.process.sentinel]
        if any(w.job is not None for w in self.pool):
            timeouts.append(0.5)  # a cancel of a running job should stop it within a step or so
        woke = wait(waitables, timeout=min(timeouts) + 0.01)
        if self.waker.r in woke:
            self.waker.drain()
            # Events are hints: rescan soon, after a short pause that lets a burst of events settle.
            self.next_scan = min(self.next_scan, time.monotonic() + 0.05)

    def _decide_exit(self) -> None:
        busy = any(w.job is not None for w in self.pool)
        if self.stopping:
            if not busy:
                self.exit_code = 0
            return
        settling = [w for w in self.waiting if not w.blocked]  # a blocked drop waits for a person
        if not self.once or not self.scanned_since_start or busy or settling or self.journal.pending_moves():
            return
        if self.followup.busy(self.journal):  # hooks and OBS updates of what was delivered
            return
        queued = self.journal.jobs((JobState.QUEUED,))
        if not queued and self.waiting:
            reasons = "; ".join(f"{w.sidecar}: {w.reason}" for w in self.waiting)
            logger.error("{} drop(s) could not be taken from the inbox: {}", len(self.waiting), reasons)
            self.exit_code = 1
        elif not queued:
            self.exit_code = 0
        elif self.devices and set(self.pool.fatal) >= set(self.devices):
            logger.error("no worker could load the models; {} job(s) stay queued", len(queued))
            self.exit_code = 1

    def _status_text(self) -> str:
        running = [f"{w.job.name}: {progress_text(w.last_progress)}" for w in self.pool if w.job is not None]
        if self.stopping:
            return "stopping" + (f"; {'; '.join(running)}" if running else "")
        queued = len(self.journal.jobs((JobState.QUEUED,)))
        text = "; ".join(running) if running else "idle"
        if self.low_space:
            text += f"; paused: {self.low_space}"
        if self.pool.fatal:
            text += "; cannot load the models: " + "; ".join((e.error.splitlines() or [""])[0] for e in self.pool.fatal.values())
        return text + (f"; {queued} queued" if queued else "")

    # --- what status shows besides the jobs ----------------------------------------------------

    def _supervisor_state(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "started_at": self.started_at,
            "beat_at": time.time(),
            "paused": self.low_space,
            "stopping": self.stopping,
            **({"host": self.settings.host} if self.journal.multi_host else {}),
        }

    def _daemon_key(self, key: str) -> str:
        """Several hosts share the journal: each publishes its own state (``supervisor@gpu1``)."""
        return f"{key}@{self.settings.host}" if self.journal.multi_host else key

    def _workers_state(self) -> dict[str, dict[str, Any]]:
        now = time.monotonic()
        out: dict[str, dict[str, Any]] = {}
        for device in self.devices:
            w = self.pool.workers.get(device)
            fatal = self.pool.fatal.get(device)
            if w is None:
                state = "cannot load the models" if fatal else "restarting" if device in self.pool.restart_at else "stopped"
                out[device] = {"state": state, "error": fatal.error if fatal else None}
                continue
            state = "not responding" if w.silent else "busy" if w.job else "ready" if w.ready else "loading the models"
            out[device] = {
                "state": state,
                "pid": w.process.pid,
                "job": w.job.name if w.job else None,
                "silent_s": round(now - w.last_heard) if w.silent else None,
                "error": fatal.error if fatal else None,
            }
        return out

    def _publish(self, force: bool = False) -> None:
        """The daemon's state for ``fploopd status``: when it changes, and every PUBLISH_S as a heartbeat."""
        workers = self._workers_state()
        waiting = [vars(d) for d in self.waiting]
        snapshot = (workers, waiting, self.low_space, self.stopping)
        now = time.monotonic()
        if not force and snapshot == self.published and now < self.next_publish:
            return
        if self.published is None or waiting != self.published[1]:  # the table is rewritten only on change
            self.journal.set_waiting(waiting)
        self.journal.set_daemon(self._daemon_key("workers"), workers)
        self.journal.set_daemon(self._daemon_key("supervisor"), self._supervisor_state())
        self.published, self.next_publish = snapshot, now + PUBLISH_S

    # --- intake -------------------------------------------------------------------------------

    def _check_space(self) -> None:
        """Pause intake and dispatch while the root's disk is short of ``min_free_mb``; resume after."""
        try:
            free = shutil.disk_usage(self.layout.root).free
        except OSError:
            return
        reserve = self.settings.min_free_mb * MIB
        if free < reserve:
            if self.low_space is None:
                logger.error(
                    "only {} MiB free on the disk of {} (min_free_mb = {}): intake and new jobs paused until there is room",
                    free // MIB, self.layout.root, self.settings.min_free_mb,
                )
            self.low_space = f"only {free // MIB} MiB free on the root's disk (min_free_mb = {self.settings.min_free_mb})"
        elif self.low_space is not None:
            logger.info("{} MiB free again: intake and jobs resume", free // MIB)
            self.low_space = None

    def _scan(self) -> None:
        try:
            result = self.intake.scan()
        except OSError as exc:  # the share is gone for a moment
            logger.error("scanning {} failed: {}", self.layout.inbox, exc)
            return
        waiting = list(result.waiting)
        for drop in result.ready:
            if self.low_space is not None:
                waiting.append(self._held(drop, f"paused: {self.low_space}"))
            else:
                self.intake.claim(drop, self.journal, self.notifier.beat)  # a failed one waits, with its reason, next scan
        if self.low_space is None:
            self.held_since.clear()
        self.waiting = waiting
        self.scanned_since_start = True

    def _held(self, drop: Drop, reason: str) -> Waiting:
        """A ready drop the daemon holds back (no room on the disk)."""
        pipeline = drop.spec.pipeline if drop.spec is not None else drop.pipeline
        sidecar = display(self.layout.rel(drop.sidecar))
        since = self.held_since.setdefault(sidecar, time.time())
        return Waiting(sidecar=sidecar, name=display(drop.sidecar.stem), pipeline=pipeline, reason=reason, since=since)

    # --- workers ------------------------------------------------------------------------------

    def _start_workers(self) -> None:
        for device in self.devices:
            self.pool.start(device)

    def _read_workers(self) -> None:
        self.pool.receive()
        for w in self.pool:
            while w.backlog:
                self._on_message(w, w.backlog[0])  # JournalAway: kept, handled when the database is back
                w.backlog.popleft()

    def _on_message(self, w: WorkerHandle, msg: Any) -> None:
        w.last_heard = time.monotonic()
        if w.silent:
            w.silent = False
            logger.warning("the worker on {} responds again", w.device)
        if isinstance(msg, m.Beat):
            self.metrics.gpu(w.device, msg.gpu)
            return
        if isinstance(msg, m.Ready):
            self.pool.loaded(w, msg)
            return
        if isinstance(msg, m.Fatal):
            w.fatal = msg.error
            logger.error("worker on {} cannot start: {}", w.device, msg.error.error)
            return
        if isinstance(msg, m.Exiting):
            w.retiring = msg.reason
            return
        job = w.job
        if job is None or msg.job_id != job.id:
            logger.warning("ignoring {} for job {} from worker {}", type(msg).__name__, msg.job_id, w.device)
            return
        with logger.contextualize(job=job.id):
            try:
                self._on_job_message(w, job, msg)
            except JournalAway:
                w.job = job  # the message is handled again once the database is back
                raise
            except LeaseLost:
                self._discard(w, job, msg)
            except Exception as exc:  # noqa: BLE001 - a job's trouble (a full disk) must not stop the daemon
                logger.opt(exception=True).error("handling {} of {} failed", type(msg).__name__, job.name)
                w.job = None
                if self.journal.get(job.id).state is JobState.RUNNING:
                    self._retry_or_fail(job, ErrorRecord("error", f"{type(exc).__name__}: {exc}"))

    def _on_job_message(self, w: WorkerHandle, job: Job, msg: Any) -> None:
        if isinstance(msg, m.Started):
            w.started = True
            return
        if isinstance(msg, m.JobProgress):
            if not w.lost:
                self._on_progress(w, job, msg.progress)
            return
        if self.journal.multi_host and (w.lost or not self.journal.holds(job.id, job.fence)):
            self._discard(w, job, msg)
            return
        w.job = None
        if isinstance(msg, m.Done):
            self._on_done(job, w, msg)
        elif isinstance(msg, m.Failed):
            self._on_failed(job, msg.error, input_fault=msg.input_fault)
        elif isinstance(msg, m.Stopped):
            self._on_stopped(job)

    def _discard(self, w: WorkerHandle, job: Job, msg: Any) -> None:
        """A run whose lease was lost ended here: its result is not this host's to deliver."""
        w.job, w.lost = None, False
        now = self.journal.get(job.id)
        logger.error(
            "late result of {} ({}) discarded: its lease was lost and the job is now {} on {}",
            job.name, type(msg).__name__, now.state, now.host or "no host",
        )
        self.journal.event(job.id, "late result discarded", {"host": self.settings.host, "fence": job.fence, "result": type(msg).__name__})
        if now.state is JobState.DONE and now.delivered_at is not None:
            # Delivered by the host that took it over: what this run wrote after is a stray copy.
            shutil.rmtree(self.layout.out_dir(job.id), ignore_errors=True)
            deliver.remove_checkpoints(self.layout, job.id)

    def _on_progress(self, w: WorkerHandle, job: Job, p: dict[str, Any]) -> None:
        now = time.monotonic()
        moved_on = (p.get("phase"), p.get("section"), p.get("generation")) != (
            w.last_progress.get("phase"),
            w.last_progress.get("section"),
            w.last_progress.get("generation"),
        )
        w.last_progress = p
        if moved_on:
            logger.info("{}: {}", job.name, progress_text(p))
        if moved_on or now - w.last_write >= PROGRESS_WRITE_S:
            w.last_write = now
            self.journal.set_progress(job.id, p, job.fence if self.journal.multi_host else None)
        self.progress_files.update(job, p)

    def _watch_workers(self, now: float) -> None:
        for w, silent_s in self.pool.watch(now):
            assert w.job is not None
            self.journal.set_progress(w.job.id, {**w.last_progress, "worker_silent_s": round(silent_s)})

    def _reap_workers(self) -> None:
        self.died_with_jobs.extend((w, code) for w, code in self.pool.reap(self.stopping) if w.job is not None)
        while self.died_with_jobs:
            self._job_lost(*self.died_with_jobs[0])  # JournalAway: kept, recorded when the database is back
            self.died_with_jobs.popleft()

    def _job_lost(self, w: WorkerHandle, code: int | None) -> None:
        """The worker died holding a job: a try that failed, or none at all if it never took the job."""
        job = w.job
        assert job is not None
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        with logger.contextualize(job=job.id):
            if self.journal.multi_host and (w.lost or not self.journal.holds(job.id, job.fence)):
                logger.warning("the worker on {} went away ({}) holding {}, whose lease was lost: nothing to record", w.device, how, job.name)
                return
            if not w.started:
                logger.warning("the worker on {} went away ({}) before it took {}; it stays queued", w.device, how, job.name)
                outcomes.not_started(job, self.journal)
                return
            why = f"the worker process on {w.device} died ({how})"
            if w.retiring and w.retiring.startswith("not responding"):
                why = f"the worker process on {w.device} was {w.retiring} and was restarted"
            logger.error("{} while running {}", why, job.name)
            self._retry_or_fail(job, ErrorRecord("error", why))

    # --- job outcomes -------------------------------------------------------------------------

    def _dispatch(self) -> None:
        for w in self.pool:
            if not w.available:
                continue
            here = f"{self.settings.host}:" if self.journal.multi_host else ""  # several hosts: which one runs it
            eligible = self._eligible(w.device)
            job = self.journal.claim_next(
                worker=f"{here}{os.getpid()}:{w.device}", choose=lambda jobs, w=w: self.affinity.choose(jobs, w.loras),
                eligible=eligible,
            )
            if job is None:
                if eligible is None:
                    return  # nothing due for anyone
                continue  # another worker may take what this one cannot
            with logger.contextualize(job=job.id):
                try:
                    msg = self._run_message(job)
                except Exception as exc:  # noqa: BLE001 - one job's broken record must not stop the others
                    logger.opt(exception=True).error("cannot start {}", job.name)
                    self._fail(job, ErrorRecord("error", f"cannot start the job: {type(exc).__name__}: {exc}"))
                    continue
                if msg is None:
                    continue
                w.job, w.started, w.stop_sent, w.last_progress, w.last_write = job, False, False, {}, 0.0
                w.lost = False
                w.loras = lora_set(job.spec or {})
                logger.info("running {} ({}) on {}, try {}", job.name, job.pipeline, w.device, job.attempts + 1)
                w.send(msg)

    def _eligible(self, device: str) -> Callable[[Job], bool] | None:
        """A device group takes no LoRA job while a one-GPU worker can run it (its followers hold
        the base transformer only); with groups alone, the job fails there and says why."""
        if "+" not in device or all("+" in d for d in self.devices):
            return None
        return lambda job: not lora_set(job.spec or {})

    def _run_message(self, job: Job) -> m.RunJob | None:
        """What the worker needs to run ``job``; None when the job failed here instead (its inputs
        are gone, or its recorded spec cannot be read by this version: no worker could run it)."""
        missing = [i["name"] for i in job.inputs if not (self.layout.inputs_dir(job.id) / i["name"]).exists()]
        if missing:
            self._fail(job, ErrorRecord("error", f"inputs missing from the work dir: {', '.join(missing)}"))
            return None
        assert job.spec is not None
        try:
            spec = recorded_spec(job.spec)
        except SpecError as exc:
            logger.error("{} failed: {}", job.name, exc.message)
            self._fail(job, exc.record())
            return None
        try:
            loras = job_loras(spec, lora_folders(self.settings, self.layout), job.name, self.layout.root)
        except InputError as exc:  # deleted or replaced by a bad file since intake
            logger.error("{} failed: {}", job.name, exc.message)
            self._fail(job, exc.record())
            return None
        media = [i for i in job.inputs if i["field"] in MEDIA_FIELD_NAMES]
        return m.RunJob(
            id=job.id,
            name=job.name,
            spec=spec,
            seeds=list(job.seeds or []),
            inputs={i["field"]: str(self.layout.inputs_dir(job.id) / i["name"]) for i in media},
            input_hashes={i["field"]: i["sha256"] for i in media if i.get("sha256")},
            out_dir=str(self.layout.out_dir(job.id)),
            work_dir=str(self.layout.checkpoint_dir(job.id)),
            loras=[(str(path), scale) for path, scale in loras],
        )

    def _on_done(self, job: Job, w: WorkerHandle, result: m.Done) -> None:
        self.progress_files.finishing(job)
        outcomes.finished(job, self.layout, self.journal, {"outputs": result.outputs, "timings": result.timings}, result.model)
        self.progress_files.ended(job, self.journal)
        if "total_s" in result.timings:
            self.metrics.job_done(job.pipeline or "", result.timings["total_s"])
        self._settle()

    def _on_failed(self, job: Job, error: ErrorRecord, input_fault: bool) -> None:
        if input_fault:  # never retried
            logger.error("{} failed: {}", job.name, error.error)
            self._fail(job, error)
        else:
            self._retry_or_fail(job, error)

    def _on_stopped(self, job: Job) -> None:
        outcomes.stopped(job, self.layout, self.journal)
        self.progress_files.ended(job, self.journal)
        self._settle()

    def _fail(self, job: Job, error: ErrorRecord) -> None:
        outcomes.failed(job, self.layout, self.journal, error)
        self.progress_files.ended(job, self.journal)
        self._settle()

    def _retry_or_fail(self, job: Job, error: ErrorRecord, backoff: bool = True) -> None:
        outcomes.retry_or_fail(job, self.layout, self.journal, self.settings, error, backoff)
        self.progress_files.ended(job, self.journal)
        self._settle()

    # --- cancels ------------------------------------------------------------------------------

    def _handle_cancels(self) -> None:
        for w in self.pool:
            if w.job is not None and not w.stop_sent and self.journal.get(w.job.id).cancel_requested:
                logger.info("cancel requested for {}: stopping at the next step", w.job.name)
                w.send(m.StopJob(w.job.id))
                w.stop_sent = True
        for job in self.journal.jobs((JobState.QUEUED,)):
            if job.cancel_requested:  # flagged while it ran, then requeued by a crash
                with contextlib.suppress(IllegalTransition):
                    outcomes.cancel_queued(job, self.layout, self.journal)

    def _settle(self) -> None:
        """Finish recorded file moves; one that fails (a share gone, a full disk) is tried again later."""
        now = time.monotonic()
        for job in self.journal.pending_moves():
            if self.settle_after.get(job.id, 0.0) > now:
                continue
            try:
                deliver.settle(job, self.layout, self.journal, self.notifier.beat)
            except Exception as exc:  # noqa: BLE001 - one job's delivery must not stop the others
                logger.opt(exception=not isinstance(exc, OSError)).error(
                    "delivering {} failed: {}; trying again in {:.0f} s", job.name, exc, SETTLE_RETRY_S
                )
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
    # Several hosts share the root: one daemon per host (its own lock folder under .fploopd/hosts/).
    lock = RootLock(layout.state / "hosts" / settings.host / "daemon.lock" if is_postgres(settings.journal) else layout.lock)
    if not lock.acquire():
        raise RootLockedError(f"another fploopd daemon (pid {lock.holder()}) is running on {settings.root}", file=str(layout.lock))
    try:
        supervisor = Supervisor(settings, once=once)
        if started is not None:
            started(supervisor)
        return supervisor.run(install_signals=install_signals)
    finally:
        lock.release()

