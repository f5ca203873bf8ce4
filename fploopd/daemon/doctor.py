"""``fploopd doctor``: check what the daemon needs and say what to fix."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fploopd.daemon.layout import Layout
from fploopd.daemon.settings import Settings

GIB = 1024**3
MIN_FREE_GIB = 10
# Compiled kernels grow by about 150 MB per new video size (H200, docs/benchmarks.md); past this,
# doctor suggests clearing them.
CACHE_WARN_GIB = 20


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "ok" | "warn" | "fail"
    detail: str
    fix: str = ""


def run_checks(settings: Settings) -> list[Check]:
    checks: list[Check] = []
    for group in (_python, _torch, _codecs, _models, _folders, _disk, _caches, _journal):
        try:
            checks.extend(group(settings))
        except Exception as exc:  # noqa: BLE001 - a broken check is itself a finding
            checks.append(Check(group.__name__.strip("_"), "fail", f"the check itself failed: {type(exc).__name__}: {exc}"))
    return checks


def _python(settings: Settings) -> Iterator[Check]:
    v = sys.version_info
    ok = v >= (3, 10)
    yield Check("python", "ok" if ok else "fail", f"{sys.version.split()[0]} at {sys.executable}", "" if ok else "install Python 3.10 or newer")


def _torch(settings: Settings) -> Iterator[Check]:
    import torch

    yield Check("torch", "ok", f"{torch.__version__}")
    wants_gpu = any(d.strip().startswith("cuda") for d in settings.device.split(","))
    if not torch.cuda.is_available():
        status = "fail" if wants_gpu else "warn"
        yield Check(
            "cuda",
            status,
            f"no CUDA device visible (torch built for CUDA {torch.version.cuda or 'none'})",
            "install the CUDA build of torch that suits your driver (https://pytorch.org), check `nvidia-smi`; "
            "the daemon can run on the CPU only with --model tiny",
        )
        return
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        name = torch.cuda.get_device_name(i)
        low = total < 6 * GIB
        yield Check(
            f"cuda:{i}",
            "warn" if low else "ok",
            f"{name}, {free / GIB:.1f} of {total / GIB:.1f} GiB free",
            "FramePack needs about 6 GiB with vram = \"low\"" if low else "",
        )


def _codecs(settings: Settings) -> Iterator[Check]:
    import av

    yield Check("pyav", "ok", f"{av.__version__}")
    for codec, use, required in (("libx264", "mp4 outputs", True), ("prores_ks", "prores outputs", False)):
        try:
            av.codec.Codec(codec, "w")
            yield Check(f"encoder {codec}", "ok", f"for {use}")
        except Exception:  # noqa: BLE001 - PyAV raises several kinds for a missing codec
            yield Check(
                f"encoder {codec}",
                "fail" if required else "warn",
                f"not in this PyAV/FFmpeg build ({use})",
                "install the PyAV wheel from PyPI (`pip install --force-reinstall av`), which bundles FFmpeg with libx264",
            )


def _models(settings: Settings) -> Iterator[Check]:
    from fploopd.engine.sources import describe

    try:
        rows = describe(settings.model)
    except Exception as exc:  # noqa: BLE001 - e.g. a --model folder that does not exist
        yield Check("models", "fail", str(exc), "pass --model tiny, --model auto, or a folder holding the FramePack weights")
        return
    missing = [r["component"] for r in rows if r["status"] == "missing"]
    found = [r for r in rows if r["status"] == "found"]
    if missing:
        yield Check(
            "models",
            "fail",
            f"--model {settings.model}: missing {', '.join(str(m) for m in missing)}",
            "see `fploopd models`; put the FramePack weights in an HF cache or set allow_download = true in fploopd.toml",
        )
    else:
        sources = sorted({str(r["source"]) for r in found})
        yield Check("models", "ok", f"--model {settings.model}: {len(found)} components found ({', '.join(sources)})")


def _folders(settings: Settings) -> Iterator[Check]:
    layout = Layout(settings.root)
    if not settings.root.is_dir():
        yield Check("root", "fail", f"{settings.root} does not exist", f"run `fploopd init --root {settings.root}`")
        return
    folders = layout.user_folders()
    missing = [layout.rel(f) for f in folders if not f.is_dir()]
    if missing:
        yield Check("folders", "warn", f"missing: {', '.join(missing)}", f"run `fploopd init --root {settings.root}`")
    unwritable = [layout.rel(f) for f in folders if f.is_dir() and not os.access(f, os.W_OK | os.X_OK)]
    if unwritable:
        yield Check(
            "permissions",
            "fail",
            f"the daemon's user cannot write {', '.join(unwritable)}",
            "give the service user (fploopd) write access, e.g. `chown -R fploopd: ROOT` or a shared group with g+w",
        )
    elif not missing:
        yield Check("folders", "ok", f"{settings.root}: inbox, outbox, failed, archive, profiles writable")
    # Claims and deliveries are renames: every folder must be on the same file system as .fploopd/.
    state = layout.state if layout.state.is_dir() else settings.root
    devices = {layout.rel(f) or ".": os.stat(f).st_dev for f in folders if f.is_dir()}
    apart = [name for name, dev in devices.items() if dev != os.stat(state).st_dev]
    if apart:
        yield Check(
            "one file system",
            "fail",
            f"{', '.join(apart)} are on another file system than {layout.rel(state) or '.'}: files cannot be moved by rename",
            "keep the whole root on one disk or share (mount the share at the root, not at inbox/)",
        )


def _disk(settings: Settings) -> Iterator[Check]:
    if not settings.root.is_dir():
        return
    free = shutil.disk_usage(settings.root).free
    low = free < MIN_FREE_GIB * GIB
    yield Check(
        "disk",
        "warn" if low else "ok",
        f"{free / GIB:.1f} GiB free at {settings.root}",
        f"free some space: videos and checkpoints need room (at least {MIN_FREE_GIB} GiB recommended)" if low else "",
    )


def _caches(settings: Settings) -> Iterator[Check]:
    caches = Layout(settings.root).caches
    if not caches.is_dir():
        return
    size = sum(f.stat().st_size for f in caches.rglob("*") if f.is_file() and not f.is_symlink())
    big = size > CACHE_WARN_GIB * GIB
    yield Check(
        "kernel cache",
        "warn" if big else "ok",
        f"{size / GIB:.2f} GiB of compiled kernels in {caches}",
        f"stop the daemon and delete {caches}: it is rebuilt, and the next job of each video size compiles again"
        if big else "",
    )


def _journal(settings: Settings) -> Iterator[Check]:
    layout = Layout(settings.root)
    if not layout.journal.exists():
        yield Check("journal", "ok", "no journal yet (created by the first `fploopd run`)")
        return
    import sqlite3

    db = sqlite3.connect(f"file:{layout.journal}?mode=ro", uri=True, timeout=10)
    try:
        result = db.execute("PRAGMA quick_check").fetchone()[0]
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        db.close()
    if result != "ok":
        yield Check("journal", "fail", f"{layout.journal}: {result}", "stop the daemon and keep a copy of .fploopd/ before repairing")
    else:
        yield Check("journal", "ok" if mode == "wal" else "warn", f"{layout.journal} ({mode})", "" if mode == "wal" else "keep .fploopd/ on a local disk")
    from fploopd.daemon.service import RootLock

    lock = RootLock(layout.lock)
    if lock.acquire():
        lock.release()
        yield Check("daemon", "ok", "no daemon is running on this root")
    else:
        yield Check("daemon", "ok", f"a daemon is running on this root (pid {lock.holder()})")


def report(checks: list[Check], out: Callable[[str], None] = print) -> int:
    marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
    for c in checks:
        out(f"[{marks[c.status]}] {c.name}: {c.detail}")
        if c.fix and c.status != "ok":
            out(f"       fix: {c.fix}")
    failed = [c for c in checks if c.status == "fail"]
    out("all good" if not failed else f"{len(failed)} problem(s) to fix")
    return 1 if failed else 0

