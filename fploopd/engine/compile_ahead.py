"""Compiling ahead in a helper process: a worker's first job runs eagerly instead of waiting for the
compiler, and the next ones switch to the compiled code the helper has made meanwhile.

A worker's first loop job spent about two minutes of its 145-174 s compiling (an H200,
docs/benchmarks.md). torch.compile is not thread-safe (a background thread was tried and removed:
docs/perf-notes.md), but inductor's on-disk cache is shared by processes. So the worker describes
each new call of a compiled function (the shapes, strides and dtypes of its tensors, its other
arguments) and sends that to a helper process, which holds one block of each kind and a VAE built
from the same configs with random weights, and makes the same call on random tensors of that
description through its own ``torch.compile``: the graphs land in the cache. The worker runs those
calls eagerly until a job starts with them compiled (``begin_job``); its own compile is then a cache
hit, seconds of tracing instead of a minute of code generation.

The helper process and the calls' descriptions are ``compile_helper``; this module is the worker's
side. If the helper cannot compile a call (out of its memory share, a compiler error) or dies, the
worker compiles that call itself, as it did without a helper. The helper lives under a share of the GPU's
memory that the worker's tier leaves spare, and exits when idle (the next new call starts another).

Once a helper has settled every target (the two block kinds and, where compiled, the VAE decoder:
compiled, or left to the worker), a marker for the setup (models, preparation, GPU model, torch)
goes into the compile cache. A worker that finds it compiles on first use instead: its graphs are
cache hits, and that beats an eager first job and the switch (H200s, the 640 loop job: a first job
of 53 s from the cache, of 68 s eager beside a helper).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch
from loguru import logger

from fploopd.engine.blocks import EAGER_BLOCKS, BlockFns
from fploopd.engine.compile_helper import (
    IDLE_EXIT_S,
    TARGETS,
    CallSpec,
    HelperSetup,
    TensorSpec,
    describe,
    dtype_name,
    helper_main,
)
from fploopd.fsutil import write_json_atomic

MIN_ROOM = 4 * 2**30  # the two block kinds at the 640 bucket fit in about 3 GiB
# An eager job peaks above a compiled one (an H200, the 640 loop job: 60.7 against 54.3 GiB), and
# the tiers plan for compiled jobs: the helper gets what is spare beyond that.
EAGER_EXTRA = int(6.5 * 2**30)
MARKER_PREFIX = "fploopd-compiled-ahead-"  # the warm markers' names in the compile cache
# diffusers' config keys that make no graph: where the weights were read from, and which values were
# defaults, a list in set order that differs from process to process (Python's string hashing).
CONFIG_BOOKKEEPING = frozenset({"_name_or_path", "_use_default_values"})
# How a worker's log says which way it compiles (the workers bench reads these lines back).
SAYS_HELPER = "compiling ahead in a helper process"
SAYS_FIRST_USE = "compiling in the worker on first use"
MAX_CRASHES = 2  # helpers that died mid-compile before the worker stops starting them


def setup_for(components: Any, room: int | None, *, idle_exit_s: float = IDLE_EXIT_S) -> HelperSetup:
    """The helper's setup for a worker's placed ``components`` (``engine.components.Components``)."""
    t, vae, w = components.transformer, components.vae, components.weights
    compile_vae = components.vae_accel is not None and components.compile_vae
    device = components.device
    if device.type == "cuda" and device.index is None:  # the helper needs the GPU by number
        device = torch.device("cuda", torch.cuda.current_device())
    return HelperSetup(
        device=str(device),
        room=room,
        transformer_class=_class_path(t),
        transformer_config=dict(t.config),
        transformer_dtype=dtype_name(next(t.parameters()).dtype),
        transformer_requires_grad=next(t.parameters()).requires_grad,
        fused=bool(w is not None and w.fused),
        fp8_granularity=None if w is None else w.fp8_granularity,
        compile_mode=components.runner_options.compile_mode,
        vae_class=_class_path(vae) if compile_vae else None,
        vae_config=dict(vae.config) if compile_vae else None,
        vae_dtype=dtype_name(next(vae.parameters()).dtype),
        vae_requires_grad=next(vae.parameters()).requires_grad,
        idle_exit_s=idle_exit_s,
    )


def attach(components: Any, room: int | None = None) -> CompileAhead | None:
    """Compile ahead for a worker's placed ``components`` where it applies: a GPU, compiled blocks,
    and at least ``MIN_ROOM`` for the helper beside the VRAM tier (``room``: the helper's memory,
    instead of ``helper_room`` of the tier's spare). None where it does not (a GPU worker logs
    why): the worker then compiles on first use."""
    device = getattr(components, "device", None)
    if not isinstance(device, torch.device) or device.type != "cuda" or not components.runner_options.compile:
        return None  # nothing to compile
    room = helper_room(components.tier.spare if components.tier is not None else 0) if room is None else room
    why = too_little_room(room)
    if why is not None:
        logger.info("{} ({}): the first job waits for it", SAYS_FIRST_USE, why)
        return None
    setup = setup_for(components, room)
    marker = warm_marker(setup)
    if marker is not None and marker.exists():
        logger.info("{}: the cache holds this setup's graphs ({})", SAYS_FIRST_USE, marker.name)
        return None
    ahead = CompileAhead(setup, marker=marker)
    components.compile_ahead = ahead
    if components.vae_accel is not None and components.accel.get("vae", {}).get("compile"):
        components.accel["vae"].update(components.vae_accel.compile(ahead))
    components.accel["compile_ahead"] = {"room_gib": round(room / 2**30, 1)}
    mark = marker.name if marker is not None else "(no marker: no cache folder)"
    logger.info("{} ({:.1f} GiB of GPU memory): calls run eagerly until their graphs are compiled; the cache is "
                "marked warm as {} when all are", SAYS_HELPER, room / 2**30, mark)  # fmt: skip
    return ahead


def warm_marker(setup: HelperSetup) -> Path | None:
    """Where a helper that settled every target of ``setup`` marks the compile cache (None: no
    cache folder known). One per setup, GPU model and torch version, as inductor's graphs are."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        folder = Path(cache_dir())
    except (ImportError, OSError):  # pragma: no cover - another torch layout: no marker, always a helper
        return None
    key = {k: v for k, v in dataclasses.asdict(setup).items() if k not in ("room", "idle_exit_s")}
    for name in ("transformer_config", "vae_config"):
        if key[name] is not None:
            key[name] = {k: v for k, v in key[name].items() if k not in CONFIG_BOOKKEEPING}
    device = torch.device(setup.device)
    key["gpu"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    key["torch"] = torch.__version__
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return folder / f"{MARKER_PREFIX}{digest}.json"


def helper_room(spare: int) -> int:
    """The helper's share of ``spare`` bytes beside a tier planned for compiled jobs."""
    return max(0, spare - EAGER_EXTRA)


def too_little_room(room: int) -> str | None:
    """Why a helper cannot run in ``room`` bytes (``helper_room``) of GPU memory (None: it can)."""
    if room >= MIN_ROOM:
        return None
    return f"{room / 2**30:.1f} GiB for it beside the VRAM tier, {MIN_ROOM / 2**30:.0f} GiB needed"


def _class_path(obj: Any) -> str:
    return f"{type(obj).__module__}:{type(obj).__qualname__}"


@dataclass
class _Record:
    spec: CallSpec
    sent_s: float
    done_s: float | None = None
    outcome: str = "pending"  # "ready" | "failed" | "pending"
    error: str | None = None


@dataclass
class CompileAhead:
    """The worker's side: routes each call of a wrapped function to its eager or its compiled form
    and keeps the helper process fed. One per worker; single-threaded like the worker's jobs."""

    setup: HelperSetup
    marker: Path | None = None  # written once every target is settled (``warm_marker``)
    # Calls that go to the compiled function, fixed at job boundaries (``begin_job``): the helper
    # compiled them (here a cache hit) or could not (compiled here, as without a helper).
    active: set[CallSpec] = field(default_factory=set)
    records: dict[CallSpec, _Record] = field(default_factory=dict)
    disabled: str | None = None  # why the worker compiles everything itself from now on
    starts: int = 0
    crashes: int = 0
    _proc: Any = None
    _conn: Connection | None = None
    _origin: float = field(default_factory=time.monotonic)

    # -- wrapping --------------------------------------------------------------------------------

    def wrap(
        self,
        target: str,
        eager: Callable[..., Any],
        compiled: Callable[..., Any],
        *,
        skip: int = 0,
        layout: torch.memory_format | None = None,
    ) -> Callable[..., Any]:
        """``compiled`` for calls made active at a job's start (``begin_job``), ``eager`` until then.
        ``skip``: leading module arguments, not described (the helper has its own); ``layout``: the
        memory format the compiled path converts tensors to."""
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, not {target!r}")

        def call(*args: Any) -> Any:
            if self.disabled is not None:
                return compiled(*args)
            spec = describe(target, args[skip:], layout)
            return compiled(*args) if self.use_compiled(spec) else eager(*args)

        return call

    def blocks(self, compiled: BlockFns) -> BlockFns:
        """The two block functions (``compile.compiled_blocks``), each eager until a job starts with
        its call compiled."""
        return (self.wrap("double_block", EAGER_BLOCKS[0], compiled[0], skip=2),
                self.wrap("single_block", EAGER_BLOCKS[1], compiled[1], skip=2))  # fmt: skip

    def begin_job(self) -> None:
        """Switch to the compiled functions for what the helper has done, at a job's start: for each
        target, the calls in the order they were first made, up to the first one still compiling.
        dynamo decides static or dynamic graphs by the order of shapes it sees (static first, dynamic
        from a second shape), so the worker must see them in the helper's order for its graphs to be
        the helper's; a job repeats its shapes in order, a switch in the middle of one would not."""
        self.poll()
        for target in TARGETS:
            for record in self.records.values():
                if record.spec.target != target:
                    continue
                if record.outcome == "pending":
                    break
                self.active.add(record.spec)

    def use_compiled(self, spec: CallSpec) -> bool:
        """Whether to call the compiled function for ``spec`` now (else eager, and ask the helper)."""
        if spec in self.active:
            return True
        self.poll()
        if self.disabled is not None:
            return True
        if spec not in self.records:
            self._send(spec)
        elif self.records[spec].outcome == "pending" and not self._alive():
            self._start()  # it exited idle as this was sent: sent again to a new one
        return self.disabled is not None

    # -- the helper ------------------------------------------------------------------------------

    def _send(self, spec: CallSpec) -> None:
        if not self._alive():
            self._start()
            if self.disabled is not None:
                return
        assert self._conn is not None
        self.records[spec] = _Record(spec, self._now())
        try:
            self._conn.send(spec)
        except (BrokenPipeError, ConnectionResetError, OSError):
            self._lost("its pipe broke")

    def _start(self) -> None:
        if self.crashes >= MAX_CRASHES:
            self.disabled = f"the compile helper died {self.crashes} times"
            logger.warning("{}: compiling in this process from now on", self.disabled)
            return
        ctx = multiprocessing.get_context("spawn")
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(target=helper_main, args=(self.setup, theirs), name="fploopd-compile-ahead", daemon=True)
        proc.start()
        theirs.close()
        self._proc, self._conn = proc, ours
        self.starts += 1
        # Calls sent to a helper that has since exited are sent again, in their order.
        for record in list(self.records.values()):
            if record.outcome == "pending":
                record.sent_s = self._now()
                ours.send(record.spec)

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def poll(self) -> None:
        """Take the helper's reports; notice a helper that exited or died."""
        conn = self._conn
        if conn is None:
            return
        try:
            while conn.poll():
                self._report(conn.recv())
        except (EOFError, OSError):
            pass
        if self._proc is not None and not self._proc.is_alive():
            self._exited(self._proc.exitcode)

    def _report(self, msg: tuple[Any, ...]) -> None:
        kind, spec = msg[0], msg[1]
        record = self.records.get(spec)
        if record is None:
            return
        record.done_s, record.outcome = self._now(), kind
        if kind == "ready":
            logger.info("compile helper: {} ready after {:.1f} s", _short(spec), record.done_s - record.sent_s)
        else:
            record.error = msg[2]
            logger.warning("compile helper could not compile {} ({}): this worker compiles it itself",
                           _short(spec), msg[2])  # fmt: skip
        self._mark_if_complete()

    def _mark_if_complete(self) -> None:
        """The marker, once every target this worker compiles is settled: nothing pending, and a
        graph of each ready or left to the worker (which then compiles it into the cache itself)."""
        if self.marker is None or self.marker.exists():
            return
        records = self.records.values()
        settled = {r.spec.target for r in records}
        if any(r.outcome == "pending" for r in records) or not self.setup.targets() <= settled:
            return
        try:
            write_json_atomic(self.marker, {"setup": dataclasses.asdict(self.setup), "pid": os.getpid(),
                                            "calls": [_call_row(r) for r in records]})  # fmt: skip
        except OSError as exc:  # a full or read-only cache: the next worker uses a helper again
            logger.warning("could not mark the compile cache warm: {}", exc)

    def _exited(self, code: int | None) -> None:
        self._proc, conn, self._conn = None, self._conn, None
        if conn is not None:
            conn.close()
        if code == 0:
            return  # idle: a later new call starts another, and pending calls are sent again
        self.crashes += 1
        self._lost(f"it exited with code {code}")

    def _lost(self, why: str) -> None:
        """The helper died: what it was compiling is compiled here (it may be what killed it)."""
        pending = [r for r in self.records.values() if r.outcome == "pending"]
        for record in pending:
            record.outcome, record.error, record.done_s = "failed", f"the helper died ({why})", self._now()
        logger.warning("compile helper died ({}); {} call(s) compile in this worker instead", why, len(pending))
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()
        self._proc, self._conn = None, None

    def wait(self, timeout: float) -> bool:
        """Block until every call sent so far is ready or failed (bench, tests); False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            if not any(r.outcome == "pending" for r in self.records.values()):
                return True
            if self.disabled is not None or time.monotonic() > deadline:
                return False
            if not self._alive():
                self._start()
            if self._conn is not None:
                self._conn.poll(0.2)

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.send(None)
            except OSError:
                pass
        if self._proc is not None:
            self._proc.join(timeout=10)
            if self._proc.is_alive():
                self._proc.kill()
        self._proc, self._conn = None, None

    def summary(self) -> dict[str, Any]:
        """For the bench and the tests: what the helper did, in seconds since the worker started it."""
        return {
            "helpers_started": self.starts,
            "crashes": self.crashes,
            "disabled": self.disabled,
            "calls": [_call_row(r) for r in self.records.values()],
        }

    def _now(self) -> float:
        return time.monotonic() - self._origin


def _call_row(r: _Record) -> dict[str, Any]:
    done = None if r.done_s is None else round(r.done_s, 2)
    return {
        "target": r.spec.target,
        "sent_s": round(r.sent_s, 2),
        "done_s": done,
        "outcome": r.outcome,
        "error": r.error,
    }


def _short(spec: CallSpec) -> str:
    shapes = [list(a.shape) for a in spec.args if isinstance(a, TensorSpec)]
    return f"{spec.target} {shapes[0] if shapes else ''}"


__all__ = ["EAGER_EXTRA", "MARKER_PREFIX", "MIN_ROOM", "SAYS_FIRST_USE", "SAYS_HELPER", "CompileAhead", "attach",
           "helper_room", "setup_for", "too_little_room", "warm_marker"]  # fmt: skip
