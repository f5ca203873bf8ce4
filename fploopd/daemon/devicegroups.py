"""The ``device`` setting's device groups: ``"cuda:0+cuda:1"`` is one worker whose jobs' transformer
forwards spread over both GPUs (``engine.device_group``); ``"cuda:0+cuda:1,cuda:2"`` is that worker
and a one-GPU worker. ``"cpu+cpu"`` (CPU ranks) exists for tests. Torch-free: settings check it."""

from __future__ import annotations

import re

_CUDA = re.compile(r"^cuda:\d+$")


def normalize_group(entry: str) -> str:
    """A checked group entry without spaces: ``"cuda:0 + cuda:1"`` -> ``"cuda:0+cuda:1"``."""
    members = [m.strip() for m in entry.split("+")]
    if len(members) < 2 or not all(members):
        raise ValueError(f"the device group {entry.strip()!r} needs 2 or more devices joined by '+', e.g. 'cuda:0+cuda:1'")
    name = "+".join(members)
    for m in members:
        if m != "cpu" and not _CUDA.match(m):
            raise ValueError(f"{m!r} in the device group {name!r} is not a device; a group joins 'cuda:N' devices")
    kinds = {"cpu" if m == "cpu" else "cuda" for m in members}
    if len(kinds) > 1:
        raise ValueError(f"the device group {name!r} mixes the CPU and GPUs; a group is all GPUs")
    for m in members:
        if m != "cpu" and members.count(m) > 1:
            raise ValueError(f"the device group {name!r} names {m} twice")
    return name


def check_devices(value: str) -> str:
    """The ``device`` setting with its groups checked and normalized; a GPU may serve one worker only."""
    entries = [e.strip() for e in value.split(",") if e.strip()]
    out, owner = [], {}
    for entry in entries:
        name = normalize_group(entry) if "+" in entry else entry
        for m in name.split("+") if "+" in name else []:
            if m != "cpu" and owner.setdefault(m, name) != name:
                raise ValueError(f"{m} is in two workers ({owner[m]!r} and {name!r}); a GPU in a group serves only that group")
        out.append(name)
    for entry in out:  # a plain device that is also in a group
        if "+" not in entry and entry in owner:
            raise ValueError(f"{entry} is in two workers ({owner[entry]!r} and {entry!r}); a GPU in a group serves only that group")
    return ",".join(out) if out else value
