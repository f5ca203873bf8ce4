"""``fploopd doctor``: check what the daemon needs and say what to fix."""

from __future__ import annotations

import os
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psutil

from fploopd.daemon.layout import PIPELINE_FOLDERS, Layout
from fploopd.daemon.loras import lora_folders, shown_folders
from fploopd.daemon.settings import SETTINGS_FILE, Settings

if TYPE_CHECKING:
    from fploopd.engine.tiers import TierChoice

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
    """``settings`` are the daemon's own (the root's fploopd.toml, FPLOOPD_* and any flags)."""
    checks: list[Check] = []
    for group in (_settings, _python, _torch, _codecs, _models, _folders, _loras, _disk, _caches, _journal, _obs, _hooks):
        try:
            checks.extend(group(settings))
        except Exception as exc:  # noqa: BLE001 - a broken check is itself a finding
            checks.append(Check(group.__name__.strip("_"), "fail", f"the check itself failed: {type(exc).__name__}: {exc}"))
    return checks


def _settings(settings: Settings) -> Iterator[Check]:
    path = settings.root / SETTINGS_FILE
    where = str(path) if path.is_file() else f"no {SETTINGS_FILE} (defaults)"
    yield Check("settings", "ok", f"{where}: model {settings.model}, device {settings.device}, vram {settings.vram}")


def settings_failed(message: str) -> Check:
    """A fploopd.toml the daemon would refuse: the first thing to fix."""
    return Check("settings", "fail", message, f"fix the value in {SETTINGS_FILE} (or the FPLOOPD_* variable); `fploopd init` shows every key with its default")


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
    choices: list[TierChoice] = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        name = torch.cuda.get_device_name(i)
        low = total < 6 * GIB
        yield Check(
            f"cuda:{i}",
            "warn" if low else "ok",
            f"{name}, {free / GIB:.1f} of {total / GIB:.1f} GiB free",
            "FramePack needs about 6 GiB with vram = \"fp8-streamed\" or \"bf16-streamed\"" if low else "",
        )
        choices.append(tier_choice(free, torch.cuda.get_device_capability(i), settings))
        yield vram_tier_check(f"cuda:{i}", choices[-1], settings)
    yield host_memory_check(psutil.virtual_memory().total, choices)


def tier_choice(free: int, capability: tuple[int, int], settings: Settings) -> TierChoice:
    """The tier a worker would take now on a GPU with ``free`` bytes, for the full-size weights."""
    from fploopd.engine.tiers import FULL_SIZE, choose_tier

    # A worker chooses with its models loaded into host memory: what is free now, less them.
    host = psutil.virtual_memory().available - FULL_SIZE.resident_bytes
    return choose_tier(free, capability, settings.vram, prefer_fp8=settings.fp8, host_free=max(0, host))


def vram_tier_check(device: str, choice: TierChoice, settings: Settings) -> Check:
    """The tier a worker on ``device`` would take now (``tier_choice``) and why."""
    from fploopd.engine.compile_ahead import helper_room, too_little_room

    risky = "run out of memory" in choice.reason
    room = helper_room(choice.spare)
    if not settings.compile_ahead:
        first = "compile_ahead is off: a new worker's first job waits for the compiler"
    elif (why := too_little_room(room)) is not None:
        first = f"a new worker's first job waits for the compiler ({why})"
    else:
        first = f"a new worker's first job runs while a helper process compiles (in {room / 2**30:.1f} GiB)"
    return Check(
        f"vram tier {device}",
        "warn" if risky else "ok",
        f"{choice.summary()}; {first}",
        "close other programs on this GPU, or set vram to a smaller tier or to auto" if risky else "",
    )


def host_memory_check(total: int, choices: list[TierChoice]) -> Check:
    """Whether the host's ``total`` memory holds a worker's models for each GPU's tier."""
    from fploopd.engine.tiers import HOST_MARGIN, host_bytes

    needs = [host_bytes(c) for c in choices]
    need = sum(needs)
    each = ", ".join(f"{c.tier} {n / GIB:.0f}" for c, n in zip(choices, needs))
    detail = f"{total / GIB:.0f} GiB; the workers' models take about {need / GIB:.0f} GiB ({each} GiB)"
    if total >= need + HOST_MARGIN:
        return Check("host memory", "ok", detail)
    return Check("host memory", "warn", f"{detail}: expect swapping while they load and run",
                 "add RAM (or a swap file or page file on a fast disk), or run fewer workers (`device`)")


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
    """The weights the daemon's workers would load, found as they would find them."""
    from fploopd.engine.random_source import WARNING, is_random
    from fploopd.engine.sources import resolve
    from fploopd.errors import ModelError

    if is_random(settings.model):
        yield Check("models", "warn", f"model {settings.model}: {WARNING}", 'set model = "auto" (or a folder) for real videos')
        return
    try:
        paths = resolve(settings.model, allow_download=False)
    except ModelError as exc:
        detail, _, fix = exc.message.partition("\nFix: ")
        if settings.allow_download and settings.model != "tiny":
            yield Check("models", "warn", detail, "allow_download = true: the daemon downloads what is missing when it starts")
            return
        yield Check("models", "fail", detail, fix or "pass --model tiny, --model auto, or a folder holding the FramePack weights")
        return
    yield Check("models", "ok", f"model {settings.model}: every component found ({paths.source})")


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
    yield from _one_file_system(layout)


def _loras(settings: Settings) -> Iterator[Check]:
    layout = Layout(settings.root)
    folders = lora_folders(settings, layout)
    for folder in folders[1:]:  # loras/ itself is one of the root's folders, checked above
        if not folder.is_dir():
            yield Check("loras", "fail", f"lora_dirs: {folder} is not a folder", f"create it or remove it from lora_dirs in {SETTINGS_FILE}")
        elif not os.access(folder, os.R_OK | os.X_OK):
            yield Check("loras", "fail", f"lora_dirs: {folder} cannot be read", "let the daemon's user read it")
    count = sum(1 for f in folders if f.is_dir() for _ in f.glob("*.safetensors"))
    yield Check("loras", "ok", f"{count} LoRA file(s) in {shown_folders(folders, layout.root)}")


def _one_file_system(layout: Layout) -> Iterator[Check]:
    """Claims (inbox -> work dir) and deliveries (work dir -> outbox, archive, failed) are renames,
    which cannot cross file systems: every folder they touch must be on one."""
    moved = [layout.inbox, *(layout.inbox / p for p in PIPELINE_FOLDERS), layout.work, layout.outbox, layout.failed, layout.archive]
    devices = {f: os.stat(f).st_dev for f in moved if f.is_dir()}
    if not devices:
        return
    # The root's own file system is the reference, unless most of the folders live elsewhere together.
    counts = Counter(devices.values())
    root_dev = os.stat(layout.root).st_dev
    main = root_dev if counts.get(root_dev, 0) * 2 >= len(devices) else counts.most_common(1)[0][0]
    apart = [layout.rel(f) for f, dev in devices.items() if dev != main]
    if apart:
        yield Check(
            "one file system",
            "fail",
            f"{', '.join(apart)} {'is' if len(apart) == 1 else 'are'} on another file system than the rest of the root: "
            "files cannot be moved there by rename",
            "keep the whole root on one file system, because claims and deliveries are renames "
            "(mount a share at the root, not at inbox/, and do not link its folders elsewhere)",
        )
    else:
        yield Check("one file system", "ok", "inbox, work, outbox, failed and archive are on one file system")


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
    from fploopd.daemon.journal import JournalError
    from fploopd.daemon.recover import check_root_journal

    layout = Layout(settings.root)
    if settings.journal:
        yield from _postgres(settings)
        return
    yield from _sqlite_place(layout)
    try:
        check_root_journal(layout)
    except JournalError as exc:
        yield Check("journal", "fail", exc.message, f"run `fploopd journal recover --root {settings.root}`")
    else:
        if not layout.journal.exists():
            yield Check("journal", "ok", "no journal yet (the first `fploopd run` creates it)")
        else:
            yield from _journal_health(layout)
    from fploopd.daemon.service import RootLock

    lock = RootLock(layout.lock)
    if lock.acquire():
        lock.release()
        yield Check("daemon", "ok", "no daemon is running on this root")
    else:
        yield Check("daemon", "ok", f"a daemon is running on this root (pid {lock.holder()})")


def _sqlite_place(layout: Layout) -> Iterator[Check]:
    """SQLite's locks and WAL do not work on a network share: several hosts need PostgreSQL."""
    from fploopd.daemon.journalcheck import fs_type, is_network

    kind = fs_type(layout.state if layout.state.exists() else layout.root)
    if is_network(kind):
        yield Check(
            "journal place", "fail",
            f"the root {layout.root} is on a network file system ({kind}): the SQLite journal in .fploopd/ must not live there "
            "(its locking and WAL do not work over NFS/SMB, and two hosts would corrupt it)",
            'give every host the same PostgreSQL journal (journal = "postgresql://..." in fploopd.toml; README '
            '"Several GPU machines"), or keep the root on a local disk',
        )


def _postgres(settings: Settings) -> Iterator[Check]:
    """A PostgreSQL journal: reachable, this fploopd's schema, clocks close enough for the leases."""
    from fploopd.daemon.journal import SCHEMA_VERSION, JournalError
    from fploopd.daemon.journalcheck import SKEW_WARN_FRACTION, postgres_facts

    try:
        facts = postgres_facts(settings.journal, settings.host)
    except JournalError as exc:
        yield Check("journal", "fail", exc.message, "start PostgreSQL, or fix the URL (host, port, user, database) in journal")
        return
    yield Check("journal", "ok", f"{facts['where']} (PostgreSQL {facts['server_version']}), this host is {settings.host}")
    schema = facts["schema"]
    if schema is None:
        yield Check("journal schema", "ok", "no fploopd schema yet (the first `fploopd run` creates it)")
    elif schema == SCHEMA_VERSION:
        yield Check("journal schema", "ok", f"version {schema}")
    else:
        newer = schema > SCHEMA_VERSION
        yield Check(
            "journal schema", "fail" if newer else "ok",
            f"version {schema}; this fploopd uses {SCHEMA_VERSION}" + ("" if newer else " (upgraded at the next `fploopd run`)"),
            "update fploopd on this host to the version the other hosts run" if newer else "",
        )
    skew, limit = facts["skew_s"], settings.lease_s * SKEW_WARN_FRACTION
    yield Check(
        "clock skew", "ok" if abs(skew) <= limit else "fail",
        f"the database's clock is {skew:+.3f} s from this host's (round trip {facts['round_trip_s'] * 1000:.1f} ms); "
        f"leases of {settings.lease_s:g} s allow {limit:.1f} s",
        "" if abs(skew) <= limit else "run NTP (chrony, systemd-timesyncd) on every host and on the database server",
    )
    if facts["hosts"]:
        yield Check("hosts", "ok", "hosts that ran on this journal: " + ", ".join(facts["hosts"]))


def _journal_health(layout: Layout) -> Iterator[Check]:
    """Read-only, as `fploopd status` opens it: it must open and pass ``PRAGMA quick_check``."""
    from fploopd.daemon.journal import Journal, JournalError

    try:
        journal = Journal.open_readonly(layout.journal, "doctor")
        try:
            journal.quick_check()
            mode = journal.db.execute("PRAGMA journal_mode").fetchone()[0]
        finally:
            journal.close()
    except JournalError as exc:
        yield Check("journal", "fail", exc.message, f"stop the daemon, then run `fploopd journal recover --root {layout.root}`")
        return
    wal = mode.lower() == "wal"
    yield Check("journal", "ok" if wal else "warn", f"{layout.journal} ({mode}, quick_check ok)", "" if wal else "keep .fploopd/ on a local disk")


def _obs(settings: Settings) -> Iterator[Check]:
    """The OBS connection and each configured input (a Media Source), when [obs] names any."""
    from fploopd.daemon.obs import MEDIA_SOURCE, ObsError, input_kind, version

    if not settings.obs.enabled:
        return
    try:
        yield Check("obs", "ok", f"{settings.obs.url}: {version(settings.obs)}")
    except ObsError as exc:
        yield Check(
            "obs", "warn", f"{exc}; loops are still delivered, and OBS is updated from the next delivery once it answers",
            "start OBS and turn on Tools > WebSocket Server Settings > Enable WebSocket server (port and password as in [obs])",
        )
        return
    for channel, name in sorted(settings.obs.inputs.items()):
        try:
            kind = input_kind(settings.obs, name)
        except ObsError as exc:
            yield Check(f"obs input {name}", "fail", f"channel {channel}: {exc}", f"add a Media Source named {name!r} to a scene in OBS")
            continue
        if kind != MEDIA_SOURCE:
            yield Check(f"obs input {name}", "warn", f"channel {channel}: {name!r} is a {kind}, not a Media Source",
                        "use a Media Source (ffmpeg_source): fploopd sets its local file and looping")
        else:
            yield Check(f"obs input {name}", "ok", f"channel {channel}: a Media Source")


def _hooks(settings: Settings) -> Iterator[Check]:
    """Each delivery hook's program is there (url hooks are not called: that would deliver)."""
    from fploopd.daemon.hooksettings import named_hooks

    for name, hook in named_hooks(settings.hooks).items():
        if hook.run is None:
            yield Check(f"hook {name}", "ok", f"on {', '.join(hook.on)}: POST {hook.url}")
            continue
        program = hook.run[0]
        found = shutil.which(program, path=os.environ.get("PATH")) if os.sep not in program else (
            program if os.access(settings.root / program, os.X_OK) else None
        )
        if found is None:
            yield Check(f"hook {name}", "fail", f"program {program!r} not found or not executable",
                        "give its full path in run = [...], or install it; hooks run from the root folder with no shell")
        else:
            yield Check(f"hook {name}", "ok", f"on {', '.join(hook.on)}: {' '.join(hook.run)}")


def report(checks: list[Check], out: Callable[[str], None] = print) -> int:
    marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
    for c in checks:
        out(f"[{marks[c.status]}] {c.name}: {c.detail}")
        if c.fix and c.status != "ok":
            out(f"       fix: {c.fix}")
    failed = [c for c in checks if c.status == "fail"]
    out("all good" if not failed else f"{len(failed)} problem(s) to fix")
    return 1 if failed else 0

