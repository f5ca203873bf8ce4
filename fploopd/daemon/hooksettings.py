"""The ``[obs]`` table and the ``[[hooks]]`` list of ``fploopd.toml``: what a delivery reaches
besides the outbox. Validated like every setting (unknown keys refused, values bounded).

Anything that reaches another machine is off by default: the OBS url and hook urls must be on this
machine (loopback) unless their table says ``allow_remote = true``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import ConfigDict, Field, field_validator, model_validator
from pydantic.dataclasses import dataclass

from fploopd.spec import CHANNEL_NAME, PIPELINES

OBS_PASSWORD_ENV = "FPLOOPD_OBS_PASSWORD"
HOOK_STATES = ("done", "failed", "cancelled")
_HOOK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# The placeholders a command hook's arguments may hold.
PLACEHOLDERS = ("manifest", "job", "id", "state", "outbox")


def is_loopback(host: str | None) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1): this machine only."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_url(url: str, schemes: tuple[str, ...], allow_remote: bool) -> str:
    parts = urlsplit(url)
    if parts.scheme not in schemes or not parts.hostname:
        raise ValueError(f"{url!r} is not a {' or '.join(schemes)} url with a host")
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError as exc:
        raise ValueError(f"{url!r}: {exc}") from None
    if not allow_remote and not is_loopback(parts.hostname):
        raise ValueError(
            f"{url!r} reaches another machine; fploopd only talks to this machine (127.0.0.1, localhost) "
            "unless the same table says allow_remote = true"
        )
    return url


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class ObsSettings:
    """obs-websocket 5 (OBS 28 and newer): which media source shows each channel's newest loop."""

    url: str = "ws://127.0.0.1:4455"
    password: Annotated[str, Field(max_length=256)] = dataclasses.field(default="", repr=False)
    # channel -> the name of the OBS input (a Media Source) that plays it.
    inputs: dict[Annotated[str, Field(pattern=CHANNEL_NAME.pattern)], Annotated[str, Field(min_length=1, max_length=256)]] = (
        Field(default_factory=dict)
    )
    allow_remote: bool = False
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    # An update OBS did not take (closed, unreachable, input missing) is tried this many times in
    # all, after 1, 2, 4 ... s; it never fails or delays the job.
    tries: Annotated[int, Field(ge=1, le=10)] = 4

    @model_validator(mode="after")
    def _url(self) -> ObsSettings:
        _check_url(self.url, ("ws",), self.allow_remote)
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.inputs)

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 4455


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class HookSettings:
    """One ``[[hooks]]`` entry: after a job's files are in place, run a program or POST its manifest."""

    # The journal keeps each hook's runs under this name: give every hook one that stays.
    name: Annotated[str | None, Field(pattern=_HOOK_NAME.pattern)] = None
    on: Annotated[tuple[Literal["done", "failed", "cancelled"], ...], Field(min_length=1, max_length=3)] = ("done",)
    pipeline: tuple[Literal[PIPELINES], ...] | None = None  # type: ignore[valid-type]
    channel: tuple[Annotated[str, Field(pattern=CHANNEL_NAME.pattern)], ...] | None = None
    # A program and its arguments, no shell; {manifest} {job} {id} {state} {outbox} are filled in.
    run: Annotated[tuple[Annotated[str, Field(max_length=4096)], ...], Field(min_length=1, max_length=64)] | None = None
    # Or: POST the manifest JSON here (Idempotency-Key header: the job id).
    url: str | None = None
    # HMAC-SHA256 of the body with this secret, sent as X-Fploopd-Signature: sha256=<hex>.
    secret: Annotated[str | None, Field(max_length=1024)] = dataclasses.field(default=None, repr=False)
    allow_remote: bool = False
    timeout_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    # Tries after the first failure; then the hook stays failed in `fploopd status` and the log.
    retries: Annotated[int, Field(ge=0, le=20)] = 3
    backoff_s: Annotated[float, Field(ge=0, le=3600)] = 10.0
    backoff_max_s: Annotated[float, Field(ge=0, le=86400)] = 600.0

    @field_validator("pipeline", "channel", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _run_or_url(self) -> HookSettings:
        if (self.run is None) == (self.url is None):
            raise ValueError("a hook has either run = [program, args...] or url = \"http://...\", not both nor neither")
        if self.url is not None:
            _check_url(self.url, ("http", "https"), self.allow_remote)
        if self.secret is not None and self.url is None:
            raise ValueError("secret signs a url hook's request; a run hook has no use for it")
        for arg in self.run or ():
            for name in re.findall(r"\{([^{}]*)\}", arg):
                if name not in PLACEHOLDERS:
                    raise ValueError(f"run: unknown placeholder {{{name}}} (known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)})")
        return self

    def backoff(self, failures: int) -> float:
        """The pause before the try after ``failures`` failed ones: base, 2x base, ... capped."""
        return min(self.backoff_max_s, self.backoff_s * 2 ** min(max(failures - 1, 0), 30))

    def matches(self, state: str, pipeline: str | None, channel: str | None) -> bool:
        return (
            state in self.on
            and (self.pipeline is None or pipeline in self.pipeline)
            and (self.channel is None or channel in self.channel)
        )

    def describe(self) -> str:
        return " ".join(self.run) if self.run is not None else f"POST {self.url}"


def named_hooks(hooks: tuple[HookSettings, ...]) -> dict[str, HookSettings]:
    """Each hook under its name (``hook-<position>`` when it has none); names must not repeat."""
    out: dict[str, HookSettings] = {}
    for i, hook in enumerate(hooks, start=1):
        name = hook.name or f"hook-{i}"
        if name in out:
            raise ValueError(f"hooks: two hooks are named {name!r}; give each a name of its own")
        out[name] = hook
    return out
