"""The supervisor's worker processes, one per device (or device group): started with 'spawn' (CUDA
cannot survive a fork), their pipes read, the silent ones reported and then killed, the dead reaped
and started again after a delay that grows while a device's worker keeps dying.

What a worker's message or death means for a job is the supervisor's business: the pool hands it
the messages (each handle's ``backlog``) and the dead handles, and never touches the journal.
"""

from __future__ import annotations

import collections
import multiprocessing
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from loguru import logger

from fploopd.daemon import messages as m
from fploopd.daemon.journal import Job
from fploopd.daemon.loras import LoraSet
from fploopd.daemon.settings import Settings
from fploopd.daemon.worker import worker_main
from fploopd.errors import ErrorRecord

MAX_RESTART_DELAY_S = 60.0
FATAL_RESTART_DELAY_S = 60.0


@dataclass
class WorkerHandle:
    device: str
    process: BaseProcess
    conn: Connection
    last_heard: float  # monotonic time of its last message (it beats every HEARTBEAT_S)
    ready: bool = False
    model: Any = None
    job: Job | None = None
    started: bool = False  # the worker took ``job`` (Started): from then on its death costs the job a try
    retiring: str | None = None  # why it is leaving: it gets no new job
    stop_sent: bool = False
    fatal: ErrorRecord | None = None
    silent: bool = False  # reported as not responding
    last_write: float = 0.0
    last_progress: dict[str, Any] = field(default_factory=dict)
    loras: LoraSet = ()  # the LoRA set merged into its models (by its last job)
    lost: bool = False  # its job's lease was lost (several hosts): what it makes of the job is discarded
    backlog: collections.deque[Any] = field(default_factory=collections.deque)  # read, not yet handled

    @property
    def available(self) -> bool:
        return self.ready and self.job is None and self.retiring is None and not self.silent and self.process.is_alive()

    def send(self, msg: Any) -> None:
        try:
            self.conn.send(msg)
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass  # it died; the pool reaps it


def spawn_worker(ctx: Any, target: Callable[..., None], args: tuple[Any, ...], name: str) -> BaseProcess:
    """A started worker process. Not daemonic: a worker starts processes of its own (the compile
    helper), which multiprocessing refuses a daemonic one. The supervisor stops and joins its
    workers itself (``close``, the cold stop), and a worker dies with it (``die_with_parent``)."""
    process = ctx.Process(target=target, args=args, name=name)
    process.start()
    return process


class WorkerPool:
    """The live workers by device, the devices waiting for a restart, and why a device's worker
    cannot load the models."""

    def __init__(self, settings: Settings, on_restart: Callable[[str], None] = lambda device: None) -> None:
        self.settings = settings
        self.on_restart = on_restart  # a worker that failed is started again (the metrics count it)
        self.ctx = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        self.workers: dict[str, WorkerHandle] = {}
        self.restart_at: dict[str, float] = {}
        self.deaths: dict[str, int] = {}
        self.fatal: dict[str, ErrorRecord] = {}  # devices whose worker could not load the models

    def __iter__(self) -> Iterator[WorkerHandle]:
        return iter(list(self.workers.values()))

    def start(self, device: str) -> None:
        parent, child = self.ctx.Pipe(duplex=True)
        process = spawn_worker(self.ctx, worker_main, (self.settings, device, child), f"fploopd-worker-{device}")
        child.close()
        self.workers[device] = WorkerHandle(device=device, process=process, conn=parent, last_heard=time.monotonic())
        self.restart_at.pop(device, None)
        logger.info("started worker pid {} on {}", process.pid, device)

    def start_due(self, now: float) -> None:
        """The workers whose restart delay has passed."""
        for device, at in list(self.restart_at.items()):
            if now >= at:
                self.start(device)

    def next_restart_in(self, now: float) -> float | None:
        return max(0.0, min(self.restart_at.values()) - now) if self.restart_at else None

    def receive(self) -> None:
        """Everything the workers sent, into their backlogs (the supervisor handles them in order)."""
        for w in self:
            try:
                while w.conn.poll():
                    w.backlog.append(w.conn.recv())
                    w.last_heard = time.monotonic()
            except (EOFError, OSError):
                pass  # the process died; ``reap`` sees it

    def loaded(self, w: WorkerHandle, msg: m.Ready) -> None:
        w.ready, w.model = True, msg.model
        self.deaths[w.device] = 0
        self.fatal.pop(w.device, None)

    def watch(self, now: float) -> list[tuple[WorkerHandle, float]]:
        """A worker that stops reporting (frozen, hung in a driver) is reported, then killed, to be
        started again. Returns the silent workers that hold a job, with how long they were silent."""
        silent_with_jobs: list[tuple[WorkerHandle, float]] = []
        for w in self:
            silent_s = now - w.last_heard
            if silent_s >= self.settings.worker_restart_s and w.process.is_alive():
                logger.error(
                    "the worker on {} (pid {}) has not responded for {:.0f} s (worker_restart_s): killing it to start a new one",
                    w.device, w.process.pid, silent_s,
                )  # fmt: skip
                w.process.kill()
                w.retiring = f"not responding for {silent_s:.0f} s"
            elif silent_s >= self.settings.worker_silent_s and not w.silent:
                w.silent = True
                logger.warning(
                    "the worker on {} (pid {}) has not responded for {:.0f} s{}; it is restarted after {:.0f} s",
                    w.device, w.process.pid, silent_s, f" while running {w.job.name}" if w.job else "",
                    self.settings.worker_restart_s,
                )  # fmt: skip
            if w.silent and w.job is not None:
                silent_with_jobs.append((w, silent_s))
        return silent_with_jobs

    def reap(self, stopping: bool) -> list[tuple[WorkerHandle, int | None]]:
        """The workers that exited, with their exit codes, taken out of the pool; unless the daemon
        is stopping, each is started again after its delay (``start_due``)."""
        dead: list[tuple[WorkerHandle, int | None]] = []
        for device, w in list(self.workers.items()):
            if w.process.is_alive():
                continue
            w.process.join()
            code = w.process.exitcode
            del self.workers[device]
            w.conn.close()
            dead.append((w, code))
            if stopping:
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
                self.on_restart(device)
            self.restart_at[device] = time.monotonic() + delay
        return dead

    def kill(self) -> None:
        """The cold stop: every worker at once (running jobs resume from their checkpoints)."""
        for w in self:
            if w.process.is_alive():
                w.process.kill()

    def close(self) -> None:
        """Ask the ready workers to exit, kill those still loading, and wait for all."""
        for w in self:
            if w.ready:
                w.send(m.Exit())
            else:
                w.process.kill()  # still loading the models: it holds nothing
        for w in self:
            w.process.join(timeout=10)
            if w.process.is_alive():
                w.process.kill()
                w.process.join()


__all__ = ["FATAL_RESTART_DELAY_S", "MAX_RESTART_DELAY_S", "WorkerHandle", "WorkerPool", "spawn_worker"]
