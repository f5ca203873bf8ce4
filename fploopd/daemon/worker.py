"""The GPU worker: one process per device, started with 'spawn' (CUDA cannot survive a fork).

It loads the models once and keeps them between jobs. It never touches the journal: it gets a job
from the supervisor over a Pipe, runs ``run_job``, and reports progress and the outcome back
(``fploopd.daemon.messages``). A stop request (``fploopd cancel``, a warm stop of the daemon, the
supervisor gone) is honoured at the next sampling step; the job keeps its section checkpoint. A
thread sends a heartbeat, so the supervisor notices a worker that is frozen or hung.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from loguru import logger

from fploopd.daemon import messages as m
from fploopd.daemon.crash import crashpoint, failpoint, step_delay
from fploopd.daemon.layout import Layout
from fploopd.daemon.livepreview import LivePreview
from fploopd.daemon.settings import Settings
from fploopd.engine.cuda_env import own_gpus, prefer_expandable_segments
from fploopd.errors import Cancelled, ErrorRecord, FploopdError, InputError, ModelError
from fploopd.procutil import die_with_parent


def load_models(settings: Settings, device: str, name: str | None = None) -> Any:
    """The models, loaded once per worker and kept between jobs. ``device``: as this process numbers
    its GPUs (``engine.cuda_env.own_gpus``); ``name``: as the settings do, for messages."""
    from fploopd.engine.components import load_components
    from fploopd.engine.random_source import WARNING, is_random
    from fploopd.engine.sources import resolve

    name = name or device
    first = device.split("+")[0]  # a device group's rank 0, which holds every model
    if first.startswith("cuda:"):
        import torch

        # What names no device (streams, events, kernel timing) means this worker's GPU.
        torch.cuda.set_device(first)
    if is_random(settings.model) and "+" in device:
        raise ModelError(f"model {settings.model} runs on workers of one device, not on the device group {name}",
                         field="model")  # fmt: skip
    if is_random(settings.model):
        logger.warning("model {} on {}: {}", settings.model, name, WARNING)
        from fploopd.engine.random_models import load_random

        return load_random(settings.model, device, vram=settings.vram, fp8=settings.fp8, compile_vae=settings.compile_vae)
    paths = resolve(settings.model, allow_download=settings.allow_download)
    if "+" in device:  # a device group: this process is its rank 0 and owns the followers
        from fploopd.engine.device_group import DeviceGroup, group_members, model_loader

        members = group_members(device)
        group = DeviceGroup.start(members, model_loader(settings.model, settings.allow_download))
        components = load_components(paths, members[0], vram=settings.vram, fp8=settings.fp8,
                                     compile_vae=settings.compile_vae)  # fmt: skip
        return group.attach(components)
    return load_components(paths, device, vram=settings.vram, fp8=settings.fp8, compile_vae=settings.compile_vae)


def identity_of(components: Any) -> Any:
    identity = getattr(components, "identity", None)
    if dataclasses.is_dataclass(identity) and not isinstance(identity, type):
        return dataclasses.asdict(identity)
    return identity if isinstance(identity, (str, dict, list, type(None))) else str(identity)


class Worker:
    def __init__(self, settings: Settings, device: str, conn: Connection) -> None:
        self.settings = settings
        self.device = device  # as the settings name it; its GPUs are cuda:0.. in this process
        self.local = device
        self.conn = conn
        self.parent = os.getppid()
        self.signalled = False  # SIGTERM to the worker itself: stop warm, then exit
        self.exit_after = False
        self.current: str | None = None
        self.stop_current = False
        self._send_lock = threading.Lock()  # the heartbeat thread sends too
        self._done = threading.Event()  # stops the heartbeat

    def serve(self) -> int:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the supervisor decides
        signal.signal(signal.SIGTERM, self._on_term)
        try:
            self.local = own_gpus(self.device)  # before CUDA starts in this process
        except ValueError as exc:
            error = ModelError(str(exc), field="device")
            logger.error("worker on {}: {}", self.device, error.message)
            self._send(m.Fatal(error.record()))
            return 2
        # Before the models load (minutes for real weights): a slow load is not a frozen worker.
        beat = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        beat.start()
        try:
            return self._load_and_serve()
        finally:
            self._done.set()  # no beat after the worker is done with its pipe
            beat.join(timeout=m.HEARTBEAT_S + 1)

    def _load_and_serve(self) -> int:
        started = time.monotonic()
        try:
            components = load_models(self.settings, self.local, name=self.device)
        except Exception as exc:  # noqa: BLE001 - every failure to load is reported, not raised
            error = exc if isinstance(exc, FploopdError) else ModelError(f"loading the models failed: {type(exc).__name__}: {exc}")
            logger.opt(exception=not isinstance(exc, FploopdError)).error("worker on {}: {}", self.device, error.message)
            self._send(m.Fatal(error.record()))
            return 2
        if self.settings.compile_ahead and "+" not in self.device:
            from fploopd.engine.compile_ahead import attach

            attach(components)
        ready = m.Ready(device=self.device, model=identity_of(components), load_s=round(time.monotonic() - started, 3))
        logger.info("worker on {} ready, models loaded in {:.1f} s", self.device, ready.load_s)
        self._send(ready)
        while not self.signalled:
            if not self.conn.poll(0.5):
                if os.getppid() != self.parent:
                    return 0  # the supervisor is gone
                self._idle(components)
                continue
            try:
                msg = self.conn.recv()
            except EOFError:
                return 0
            if isinstance(msg, m.Exit):
                return 0
            if isinstance(msg, m.RunJob):
                if not self._run(msg, components):
                    return 1  # an unexpected error may leave the device unusable: start afresh
                if self.exit_after:
                    return 0
        self._send(m.Exiting("SIGTERM"))
        return 0

    def _idle(self, components: Any) -> None:
        """Between jobs: take the compile helper's reports, so that its graphs are known and the
        cache is marked warm when it finishes, not only when the next job starts."""
        ahead = getattr(components, "compile_ahead", None)
        if ahead is not None:
            ahead.poll()

    def _on_term(self, signum: int, frame: Any) -> None:
        self.signalled = True

    def _heartbeat(self) -> None:
        while not self._done.wait(m.HEARTBEAT_S):
            self._send(m.Beat(gpu_memory(self.local)))

    def _run(self, job: m.RunJob, components: Any) -> bool:
        """Run one job and report its outcome; False when the process should be replaced."""
        from fploopd.pipelines import run_job
        from fploopd.pipelines.manifest import output_entry

        self.current, self.stop_current = job.id, False
        ahead = getattr(components, "compile_ahead", None)
        if ahead is not None:
            ahead.begin_job()  # what the compile helper finished meanwhile runs compiled from here
        self._send(m.Started(job.id))
        with logger.contextualize(job=job.id):
            try:
                failpoint(f"run:{job.name}")
                preview = LivePreview(Layout(self.settings.root).progress_webp(job.name))
                try:
                    result = run_job(
                        job.spec,
                        {k: Path(v) for k, v in job.inputs.items()},
                        Path(job.out_dir),
                        name=job.name,
                        seeds=job.seeds,
                        components=components,
                        work_dir=Path(job.work_dir),
                        progress=lambda p: self._progress(job.id, p),
                        should_stop=self._should_stop,
                        limits=self.settings.limits,
                        input_hashes=job.input_hashes,
                        loras=[(Path(path), scale) for path, scale in job.loras],
                        on_section=preview.add,
                    )
                finally:
                    preview.close()  # complete before the job's end is reported: the supervisor moves it
            except Cancelled:
                logger.info("stopped at a step boundary; the checkpoint stays")
                if self.exit_after:
                    self._send(m.Exiting("asked to stop"))
                self._send(m.Stopped(job.id))
                return True
            except InputError as exc:
                self._send(m.Failed(job.id, exc.record(), input_fault=True))
                return True
            except FploopdError as exc:
                self._send(m.Failed(job.id, exc.record(), input_fault=False))
                return True
            except Exception as exc:  # noqa: BLE001 - reported to the supervisor, which retries
                logger.error("job failed: {}", traceback.format_exc())
                # Said first, so that no job is handed to a worker on its way out.
                self._send(m.Exiting("an unexpected error may have left the device unusable"))
                self._send(m.Failed(job.id, ErrorRecord("error", f"{type(exc).__name__}: {exc}"), input_fault=False))
                return False
            finally:
                self.current = None
            outputs = [output_entry(o, Path(job.out_dir)) for o in result.outputs]
            if self.exit_after:
                self._send(m.Exiting("asked to stop"))
            self._send(m.Done(job.id, outputs, list(result.seeds), dict(result.timings), identity_of(components)))
            return True

    def _progress(self, job_id: str, p: Any) -> None:
        self._send(m.JobProgress(job_id, dataclasses.asdict(p)))
        if p.phase == "sample" and p.step >= 1:
            if p.section >= 2:
                crashpoint("run:section2")
            step_delay()

    def _should_stop(self) -> bool:
        while self.conn.poll():
            msg = self.conn.recv()
            if isinstance(msg, m.StopJob) and msg.job_id == self.current:
                self.stop_current = True
            elif isinstance(msg, m.Exit):
                self.stop_current = self.exit_after = True
        if self.signalled or os.getppid() != self.parent:
            self.stop_current = self.exit_after = True
        return self.stop_current

    def _send(self, msg: Any) -> None:
        try:
            with self._send_lock:
                self.conn.send(msg)
        except (BrokenPipeError, ConnectionResetError, OSError):
            os._exit(0)  # the supervisor is gone; nothing to report to


def gpu_memory(device: str) -> dict[str, int] | None:
    """The CUDA caching allocator's counters for ``device`` (host-side reads: no device sync);
    None on the CPU or before torch has touched the GPU."""
    torch = sys.modules.get("torch")
    device = device.split("+")[0]  # a device group: its first GPU (rank 0, which holds every model)
    if not device.startswith("cuda") or torch is None or not torch.cuda.is_initialized():
        return None
    try:
        return {
            "allocated": int(torch.cuda.memory_allocated(device)),
            "reserved": int(torch.cuda.memory_reserved(device)),
            "peak": int(torch.cuda.max_memory_allocated(device)),
        }
    except Exception:  # noqa: BLE001 - a heartbeat must never fail
        return None


def use_compile_cache(layout: Layout) -> None:
    """Keep compiled kernels under the root's state (unless the environment names a place), set
    before torch or flash-attn-4 are imported: torch.compile's (measured on an H200, a restarted
    worker's first loop job drops from 120 s to 53 s) and FlashAttention 4's (about 1 s a kernel;
    its entries are written atomically and a bad one is recompiled)."""
    prefer_expandable_segments()  # before CUDA starts: the streamed tiers need it under tight budgets
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(layout.compile_cache))
    os.environ.setdefault("FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED", "1")
    os.environ.setdefault("FLASH_ATTENTION_CUTE_DSL_CACHE_DIR", str(layout.attention_cache))


def worker_main(settings: Settings, device: str, conn: Connection) -> None:
    """Entry point of the spawned process."""
    from fploopd.logs import configure_logging

    die_with_parent()
    layout = Layout(settings.root)
    use_compile_cache(layout)

    configure_logging(
        level=settings.log_level,
        log_dir=layout.logs,
        filename=f"worker-{device.replace(':', '')}.log",
        tag=f"w:{device}",
    )
    code = Worker(settings, device, conn).serve()
    # Outputs are fsynced and reported; tearing down torch and the models is only a wait.
    logger.complete()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
