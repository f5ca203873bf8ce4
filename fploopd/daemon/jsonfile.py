"""Reading small user-written JSON files (sidecars, profiles) defensively."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from fploopd.errors import InputError


def read_json_object(path: Path, max_bytes: int, label: str) -> dict[str, Any]:
    """The JSON object in ``path``. Refuses links, non-files, oversize, bad UTF-8/JSON, duplicate keys.

    ``label`` is how messages name the file (the sidecar's bare name, ``profiles/fast.json``).
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise InputError(f"{label}: the file disappeared", file=label) from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{label}: must be a regular file, not a link or folder", file=label)
    if st.st_size > max_bytes:
        raise InputError(f"{label}: {st.st_size} bytes, more than the limit of {max_bytes}", file=label)
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InputError(f"{label}: more than the limit of {max_bytes} bytes", file=label)
    try:
        text = data.decode("utf-8-sig")  # Notepad writes a BOM
    except UnicodeDecodeError as exc:
        raise InputError(f"{label}: not UTF-8 text ({exc.reason} at byte {exc.start})", file=label) from None
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise InputError(f"{label}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", file=label) from None
    except _DuplicateKey as exc:
        raise InputError(f"{label}: key '{exc.key}' appears twice", field=exc.key, file=label) from None
    if not isinstance(obj, dict):
        raise InputError(f"{label}: must hold a JSON object {{...}}, not {_json_type(obj)}", file=label)
    return obj


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _json_type(obj: object) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(obj), "a number")
