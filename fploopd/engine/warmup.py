"""Compiling in the background while a worker's first job runs eagerly.

A worker's first loop job used to wait for ``torch.compile``: the two block graphs and the VAE
decoder for each decode shape, about 100 of the 145-175 s that job took on an H100/H200 from empty
caches (docs/benchmarks.md). Here the job runs the same functions eagerly instead, while one
background thread calls the compiled functions once on copies of the job's real inputs; a shape
switches to its compiled function once that call has returned (the compile cache then holds the
graph, and later calls only check guards).

A forward (``forward.TransformerRunner``) or a decode (``vae_accel.VaeAccel``) switches to the
compiled code as soon as its shapes are warm. Eager and compiled kernels round differently, so the
first steps of a worker's first job differ from a warm worker's within bf16 rounding (the size of
the difference between two attention kernels); where a job resumes from a checkpoint it is the same.

One thread, so compiles never compete with each other, and the first job's GPU work is only
delayed by the warm-up calls themselves (one block of each kind, one decode). Python's GIL is
shared: the eager job needs a few percent of a core to keep the GPU busy, the compiler the rest.

torch.compile is not thread-safe (pytorch/pytorch#118260, #126024): a compiled function called in
one thread while another thread traces fails ("Detected that you are using FX to symbolically trace
a dynamo-optimized function"), which on a GPU failed a worker's second job. So compiled code and
background compiles never overlap: the job's thread runs compiled code only under ``running()``,
which it gets only while no warm-up is queued or running (else it runs that forward or decode
eagerly), and a warm-up waits for the compiled call in progress to end.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field

import torch
from loguru import logger


@dataclass
class WarmupRecord:
    """What one background compile took, for logs and the bench."""

    what: str
    seconds: float
    ok: bool
    error: str = ""


@dataclass
class _State:
    ready: set[Hashable] = field(default_factory=set)
    failed: set[Hashable] = field(default_factory=set)
    pending: set[Hashable] = field(default_factory=set)


class BackgroundCompiler:
    """Runs warm-up calls, one at a time, in a daemon thread; says which keys are compiled.

    ``request(key, call, what)``: run ``call()`` (a compiled function on copies of real inputs)
    once, in the background, unless ``key`` was requested before. ``ready(key)``: the call
    returned, so the compiled function is warm for that key. A call that raises marks its key
    failed for good: the caller keeps the eager function for it (a worker loses speed, not jobs).
    """

    def __init__(self, name: str = "compile") -> None:
        self.name = name
        self._state = _State()
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[Hashable, Callable[[], object], str]] = queue.Queue()
        self._idle = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._exclusive = threading.Lock()  # held by a warm-up call, or by the job's compiled code
        self.records: list[WarmupRecord] = []

    @contextlib.contextmanager
    def running(self) -> Iterator[bool]:
        """For the job's thread around compiled code: True (and held) when no warm-up is queued or
        running; False: run eagerly this time (a queued warm-up goes first, so it never starves)."""
        with self._lock:
            idle = not self._state.pending
        got = idle and self._exclusive.acquire(blocking=False)
        try:
            yield got
        finally:
            if got:
                self._exclusive.release()

    def ready(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._state.ready

    def failed(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._state.failed

    def wants(self, key: Hashable) -> bool:
        """Never requested: worth making a warm-up call for (copies of inputs cost memory)."""
        with self._lock:
            s = self._state
            return key not in s.ready and key not in s.failed and key not in s.pending

    def request(self, key: Hashable, call: Callable[[], object], what: str) -> bool:
        """Queue ``call`` for ``key``; False when it was queued, done or failed before."""
        with self._lock:
            s = self._state
            if key in s.ready or key in s.failed or key in s.pending:
                return False
            s.pending.add(key)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=f"fploopd-{self.name}", daemon=True)
                self._thread.start()
        self._queue.put((key, call, what))
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Until nothing is pending (for the bench and tests); False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._state.pending, timeout)

    def _loop(self) -> None:
        while True:
            key, call, what = self._queue.get()
            start = time.perf_counter()
            error = ""
            try:
                # The job's thread runs under inference_mode too: same grad-mode guards, so the
                # compiled graph made here is the one its calls find.
                with self._exclusive, torch.inference_mode():
                    call()
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
            except Exception as exc:  # noqa: BLE001 - any compiler error: that key stays eager
                error = f"{type(exc).__name__}: {str(exc)[:300]}"
            seconds = time.perf_counter() - start
            self.records.append(WarmupRecord(what, round(seconds, 2), not error, error))
            if error:
                logger.warning("compiling {} in the background failed ({}); it runs eagerly", what, error)
            else:
                logger.info("compiled {} in the background in {:.1f} s", what, seconds)
            with self._idle:
                self._state.pending.discard(key)
                (self._state.failed if error else self._state.ready).add(key)
                self._idle.notify_all()


__all__ = ["BackgroundCompiler", "WarmupRecord"]
