"""Daemon settings: defaults < ``fploopd.toml`` < ``FPLOOPD_*`` environment < command-line flags.

Built once by the CLI into a frozen dataclass and passed down; nothing reads the environment or the
file at import time.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10, which FramePack installs often have
    import tomli as tomllib

from pydantic import ConfigDict, Field, ValidationError, field_validator
from pydantic.dataclasses import dataclass

from fploopd.daemon.devicegroups import check_devices
from fploopd.daemon.hooksettings import OBS_PASSWORD_ENV, HookSettings, ObsSettings, named_hooks
from fploopd.errors import FploopdError
from fploopd.media.limits import MediaLimits

SETTINGS_FILE = "fploopd.toml"
ENV_PREFIX = "FPLOOPD_"
# Environment variables the CLI or the service reads for other purposes, not settings.
_ENV_NOT_SETTINGS = {"FPLOOPD_ROOT", "FPLOOPD_TEST_CRASH_AT", OBS_PASSWORD_ENV}


class SettingsError(FploopdError):
    kind = "settings"


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class Settings:
    root: Path = Path(".")
    # Weights: "tiny", "auto" (FramePack weights wherever found) or a folder; "random:full" and
    # "random:tiny" are random weights built by the workers, for benchmarks only (engine/random_source.py).
    model: str = "auto"
    # "auto", "cpu", "cuda", "cuda:1" or a comma list: one worker process per entry. An entry
    # "cuda:0+cuda:1" is a device group: one worker whose jobs run on both GPUs (README).
    device: str = "auto"
    # "auto", a tier (engine/tiers.py: bf16-resident, fp8-resident, fp8-streamed, bf16-streamed; high
    # and low name the first and last), or a GiB budget such as 12: auto within it.
    vram: str = "auto"
    fp8: bool = False
    compile_vae: bool = True
    compile_ahead: bool = True
    allow_download: bool = False
    # Watching: native events, or polling for SMB/NFS shares that deliver none.
    poll: bool = False
    poll_interval_s: Annotated[float, Field(gt=0, le=3600)] = 2.0
    rescan_interval_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    settle_s: Annotated[float, Field(ge=0, le=3600)] = 3.0
    grace_s: Annotated[float, Field(ge=0, le=7 * 86400)] = 600.0
    # Failures that are not the input's fault are retried with capped exponential backoff.
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 3
    backoff_base_s: Annotated[float, Field(ge=0, le=86400)] = 30.0
    backoff_max_s: Annotated[float, Field(ge=0, le=7 * 86400)] = 1800.0
    max_sidecar_bytes: Annotated[int, Field(ge=256, le=16 * 1024 * 1024)] = 64 * 1024
    # Intake and dispatch pause while the root's file system has less free space than this.
    min_free_mb: Annotated[int, Field(ge=0, le=1024 * 1024)] = 1024
    # A worker that sends nothing for this long is reported as not responding (status, log), and
    # after worker_restart_s it is killed and started again (its job resumes from its checkpoint).
    # (A worker sends a heartbeat every 2 s, hence the lower bounds.)
    worker_silent_s: Annotated[float, Field(ge=5, le=86400)] = 60.0
    worker_restart_s: Annotated[float, Field(ge=10, le=86400)] = 600.0
    log_level: str = "INFO"
    # Folders searched for LoRAs after the root's loras/ (relative ones are under the root), e.g.
    # musubi-tuner's output folder. FPLOOPD_LORA_DIRS separates them with os.pathsep.
    lora_dirs: tuple[Path, ...] = ()
    # The web page, JSON API and /metrics ("HOST:PORT"; off when empty). An address other than
    # loopback needs http_token (or FPLOOPD_HTTP_TOKEN), and then every request must carry it.
    http: Annotated[str, Field(max_length=300)] = ""
    http_token: Annotated[str, Field(max_length=300)] = ""
    # Several hosts on one shared root: "postgresql://..." (README "Several GPU machines"); "" = the
    # root's own SQLite journal (one host). ``host`` names this machine in the journal; a job it runs
    # is held under a lease of lease_s, renewed while it works, taken over by another host when not.
    journal: str = ""
    host: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\s:@]+$")] = dataclasses.field(default_factory=socket.gethostname)
    lease_s: Annotated[float, Field(ge=2, le=3600)] = 60.0
    limits: MediaLimits = dataclasses.field(default_factory=MediaLimits)
    # What a delivery reaches besides the outbox (fploopd.daemon.hooksettings; README "OBS and delivery hooks").
    obs: ObsSettings = dataclasses.field(default_factory=ObsSettings)
    hooks: tuple[HookSettings, ...] = ()

    @field_validator("hooks")
    @classmethod
    def _hook_names(cls, value: tuple[HookSettings, ...]) -> tuple[HookSettings, ...]:
        named_hooks(value)  # raises when two hooks share a name
        return value

    @field_validator("journal")
    @classmethod
    def _journal_url(cls, value: str) -> str:
        if value and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError('expected "" (the root\'s SQLite journal) or a "postgresql://..." URL')
        return value

    @field_validator("lora_dirs", mode="before")
    @classmethod
    def _split_dirs(cls, value: Any) -> Any:
        return tuple(p for p in value.split(os.pathsep) if p) if isinstance(value, str) else value

    def devices(self) -> list[str]:
        """The devices to start a worker on; ``auto`` = every visible GPU, else the CPU."""
        wanted = [d.strip() for d in self.device.split(",") if d.strip()]
        if wanted in ([], ["auto"]):
            import torch  # only here: the supervisor needs it once, at start

            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            return [f"cuda:{i}" for i in range(count)] or ["cpu"]
        return ["cuda:0" if d == "cuda" else d for d in wanted]

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        from fploopd.engine.random_source import check_name, is_random  # torch-free

        return check_name(value) if is_random(value) else value

    @field_validator("device")
    @classmethod
    def _devices(cls, value: str) -> str:
        value = check_devices(value)  # groups ("cuda:0+cuda:1"): 2+ distinct GPUs, each GPU in one worker
        names = ["cuda:0" if d.strip() == "cuda" else d.strip() for d in value.split(",") if d.strip()]
        twice = sorted({d for d in names if names.count(d) > 1})
        if twice:  # one worker per entry, named by it
            raise ValueError(f"{', '.join(twice)} named twice: name each device once (several CPU workers: cpu:0,cpu:1)")
        return value

    @field_validator("vram", mode="before")
    @classmethod
    def _vram(cls, value: Any) -> str:
        from fploopd.engine.tiers import normalize_vram  # torch-free; ValueError names the accepted forms

        return normalize_vram(value)

    def backoff_s(self, attempts: int) -> float:
        """Delay before attempt ``attempts + 1``: base, 2x base, 4x base, ... capped."""
        if attempts <= 0:
            return 0.0
        return min(self.backoff_max_s, self.backoff_base_s * 2 ** min(attempts - 1, 30))


SETTING_NAMES = tuple(f.name for f in dataclasses.fields(Settings) if f.name not in ("root", "limits", "obs", "hooks"))


def load_settings(root: Path, flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read ``root/fploopd.toml`` (when present), then ``FPLOOPD_<NAME>`` variables, then ``flags``.

    ``flags`` holds only what the user gave on the command line (``None`` values are ignored).
    """
    env = os.environ if env is None else env
    path = Path(root).absolute() / SETTINGS_FILE
    values: dict[str, Any] = {}
    if path.is_file():
        try:
            values.update(tomllib.loads(path.read_text(encoding="utf-8")))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise SettingsError(f"{path} is not valid TOML: {exc}", file=str(path)) from None
    for key, value in env.items():
        if key.startswith(ENV_PREFIX) and key not in _ENV_NOT_SETTINGS:
            name = key[len(ENV_PREFIX) :].lower()
            if name in SETTING_NAMES:
                values[name] = value
    if env.get(OBS_PASSWORD_ENV):  # kept out of fploopd.toml, which other users may read
        values["obs"] = {**(values.get("obs") or {}), "password": env[OBS_PASSWORD_ENV]}
    values.update({k: v for k, v in (flags or {}).items() if v is not None})
    values["root"] = Path(root).absolute()
    try:
        return Settings(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise SettingsError(
            f"bad setting ({problems}); settings come from {path}, FPLOOPD_* variables and flags",
            field=field,
            file=str(path),
        ) from None


SETTINGS_TEMPLATE = """\
# fploopd settings for this root. Every key is optional: the values shown are the defaults.
# FPLOOPD_<KEY> environment variables (FPLOOPD_MODEL=tiny) and command-line flags override them.

# Weights: "tiny" (embedded test family), "auto" (FramePack weights wherever found) or a folder.
# model = "auto"
# "auto" (every GPU, else the CPU), "cpu", "cuda", "cuda:1", or "cuda:0,cuda:1" (one worker per GPU).
# "cuda:0+cuda:1": one worker whose jobs each run on both GPUs (faster single jobs, fewer per hour).
# device = "auto"
# Where the models live on the GPU. "auto" picks the fastest tier that fits the free memory:
# "bf16-resident" (about 61 GB free), "fp8-resident" (about 19 GB), "fp8-streamed" (about 6 GB:
# FP8 blocks partly streamed from host memory), "bf16-streamed" (GPUs without FP8, before Ada).
# Name a tier to force it ("high" and "low" are bf16-resident and bf16-streamed), or give a
# budget in GiB (vram = 12) to leave the rest of the card to other programs.
# vram = "auto"
# FP8 matmuls in the transformer on GPUs that have them (about 1.2x faster, slightly lossy).
# fp8 = false
# Compile the VAE decoder on a GPU (high VRAM): decodes about 1.9x faster after about a minute of
# compiling per new video size, once per worker.
# compile_vae = true
# Compile in a helper process beside each worker (where 4 GiB are left for it beside the VRAM
# tier; fploopd doctor says): a new worker's first job runs uncompiled instead of waiting about two
# minutes for the compiler.
# compile_ahead = true
# Allow downloading missing FramePack weights from the Hugging Face hub.
# allow_download = false

# Watching the inbox. Use poll = true when the inbox is an SMB/NFS share (they send no events).
# poll = false
# poll_interval_s = 2.0
# A full rescan of the inbox every this many seconds is the truth; events only wake it early.
# rescan_interval_s = 10.0
# A file is ready when its size and mtime have not changed for this long (shares stall mid-copy).
# settle_s = 3.0
# A sidecar whose media is still missing after this long fails, naming the missing file.
# grace_s = 600.0

# Failures that are not the input's fault are retried: base, 2x base, 4x base ... capped.
# max_attempts = 3
# backoff_base_s = 30.0
# backoff_max_s = 1800.0

# Largest sidecar accepted, in bytes.
# max_sidecar_bytes = 65536
# Intake and dispatch pause while the root's file system has less free space than this (MiB).
# min_free_mb = 1024
# A worker that sends nothing (not even its heartbeat) for worker_silent_s is reported as not
# responding; after worker_restart_s it is killed and restarted, and its job resumes.
# worker_silent_s = 60.0
# worker_restart_s = 600.0
# log_level = "INFO"
# LoRAs are looked up by file name in the root's loras/ folder, then in these folders.
# lora_dirs = ["/home/me/musubi-tuner/output"]

# The web page, JSON API and /metrics, e.g. "127.0.0.1:8787" (off when empty; `fploopd run --http`).
# Any address but loopback needs a token (here or in FPLOOPD_HTTP_TOKEN); every request then needs it.
# http = ""
# http_token = ""
# Several GPU machines on one shared root: every host's daemon uses one PostgreSQL journal
# (also FPLOOPD_JOURNAL or --journal). A host that stops renewing its jobs' leases for lease_s
# loses them to another host, which resumes them from their checkpoints.
# journal = "postgresql://fploopd@dbhost/fploopd"
# host = "this machine's name"
# lease_s = 60.0

[limits]
# Largest media accepted; larger files fail with an error naming the limit.
# max_image_pixels = 64000000
# max_image_bytes = 268435456
# max_video_seconds = 600.0
# max_video_frames = 36000
# max_video_pixels = 16777216
# max_video_bytes = 8589934592
# max_decoded_bytes = 8589934592

# OBS over obs-websocket 5 (OBS: Tools > WebSocket Server Settings). Each delivered loop of a channel
# (the sidecar's "channel", default its pipeline) becomes the file its media source plays.
# [obs]
# url = "ws://127.0.0.1:4455"   # another machine only with allow_remote = true
# password = ""                 # or FPLOOPD_OBS_PASSWORD
# inputs = { loop = "Loop" }    # channel = "name of the Media Source in OBS"

# Delivery hooks: after a job's files are in place. At least once, never again after a success.
# [[hooks]]
# name = "ingest"
# on = ["done"]                 # and/or "failed", "cancelled"
# run = ["/usr/local/bin/ingest", "{manifest}"]   # {manifest} {job} {id} {state} {outbox}; no shell
# # url = "http://127.0.0.1:8080/fploopd"       # or: POST the manifest (Idempotency-Key: job id)
# # secret = "..."                              # HMAC-SHA256 of the body in X-Fploopd-Signature
# timeout_s = 60.0
# retries = 3
"""
