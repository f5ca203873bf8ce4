"""Reading small user-written JSON files (sidecars, profiles) defensively.

Whatever the bytes are, the outcome is the object or an ``InputError`` naming the file: never a
``RecursionError`` (deep nesting), a ``ValueError`` (a number with thousands of digits), a value
the rest of the daemon cannot store or log (NUL, control characters, half a surrogate pair), nor a
read that blocks (a FIFO).
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any

from fploopd.daemon.files import NotRegularFile, file_kind, read_regular
from fploopd.errors import InputError

MAX_DEPTH = 16  # a sidecar is an object of values, lists and small objects: 3 levels are plenty
MAX_NUMBER_DIGITS = 40  # seeds need 19
# Control characters other than tab, line feed and carriage return; and UTF-16 surrogate halves,
# which JSON's \ud800 escapes can carry but no file name, journal or log can hold.
_BAD_CHAR = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_SHOWN_CHARS = 40  # how much of a key or value a message quotes


def read_json_object(path: Path, max_bytes: int, label: str) -> dict[str, Any]:
    """The JSON object in ``path``. Refuses links, non-files, oversize, bad UTF-8/JSON, duplicate keys,
    deep nesting, huge or non-finite numbers and control characters.

    ``label`` is how messages name the file (the sidecar's bare name, ``profiles/fast.json``).
    """
    data = _read(path, max_bytes, label)
    try:
        text = data.decode("utf-8-sig")  # Notepad writes a BOM
    except UnicodeDecodeError as exc:
        raise InputError(f"{label}: not UTF-8 text ({exc.reason} at byte {exc.start})", file=label) from None
    obj = _parse(text, label)
    if not isinstance(obj, dict):
        raise InputError(f"{label}: must hold a JSON object {{...}}, not {_json_type(obj)}", file=label)
    check_values(obj, label)
    return obj


def _read(path: Path, max_bytes: int, label: str) -> bytes:
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(file_kind(st.st_mode))
        if st.st_size > max_bytes:
            raise InputError(f"{label}: {st.st_size} bytes, more than the limit of {max_bytes}", file=label)
        data = read_regular(path, max_bytes + 1)  # it may have grown since
    except FileNotFoundError:
        raise InputError(f"{label}: the file disappeared", file=label) from None
    except NotRegularFile as exc:
        raise InputError(f"{label}: must be a regular file, not {exc.kind}", file=label) from None
    except OSError as exc:
        raise InputError(f"{label}: cannot be read ({_reason(exc)})", file=label) from None
    if len(data) > max_bytes:
        raise InputError(f"{label}: more than the limit of {max_bytes} bytes", file=label)
    return data


def _reason(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied: the daemon's user needs read permission on it"
    return exc.strerror or str(exc)


def _parse(text: str, label: str) -> Any:
    try:
        return json.loads(
            text,
            object_pairs_hook=_no_duplicate_keys,
            parse_int=_int,
            parse_float=_float,
            parse_constant=_constant,
        )
    except json.JSONDecodeError as exc:
        raise InputError(f"{label}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", file=label) from None
    except _DuplicateKey as exc:
        raise InputError(f"{label}: key {_quote(exc.key)} appears twice", field=exc.key, file=label) from None
    except _BadNumber as exc:
        raise InputError(f"{label}: {exc}", file=label) from None
    except RecursionError:
        raise InputError(f"{label}: nested too deeply (at most {MAX_DEPTH} levels of [ ] and {{ }})", file=label) from None
    except (ValueError, OverflowError) as exc:  # anything else the parser refuses: still this file's fault
        raise InputError(f"{label}: not valid JSON ({exc})", file=label) from None


class _BadNumber(ValueError):
    pass


def _int(digits: str) -> int:
    n = len(digits.lstrip("-"))
    if n > MAX_NUMBER_DIGITS:
        raise _BadNumber(f"a number with {n} digits is too large (at most {MAX_NUMBER_DIGITS} digits)")
    return int(digits)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BadNumber(f"the number {text[:_SHOWN_CHARS]} is too large")
    return value


def _constant(name: str) -> float:
    raise _BadNumber(f"{name} is not a JSON number (write a number, or leave the key out)")


def check_values(obj: dict[str, Any], label: str) -> None:
    """Depth, keys and strings of a parsed object, walked without recursion."""
    stack: list[tuple[Any, int, str]] = [(v, 2, k) for k, v in obj.items()]
    for key in obj:
        _check_text(key, label, key, "the key")
    while stack:
        value, depth, top = stack.pop()
        if depth > MAX_DEPTH:
            raise InputError(f"{label}: key {_quote(top)} is nested too deeply (at most {MAX_DEPTH} levels)", field=top, file=label)
        if isinstance(value, dict):
            for key, item in value.items():
                _check_text(key, label, top, "a key inside")
                stack.append((item, depth + 1, top))
        elif isinstance(value, list):
            stack.extend((item, depth + 1, top) for item in value)
        elif isinstance(value, str):
            _check_text(value, label, top, "the value of")


def _check_text(text: str, label: str, top: str, what: str) -> None:
    bad = _BAD_CHAR.search(text)
    if bad is None:
        return
    char = bad.group()
    kind = "half of a UTF-16 surrogate pair" if "\ud800" <= char <= "\udfff" else "a control character"
    where = f"{what} {_quote(top)}" if what != "the key" else f"the key {_quote(top)}"
    raise InputError(
        f"{label}: {where} holds {kind} (U+{ord(char):04X}) at position {bad.start()}; remove it",
        field=_printable(top),
        file=label,
    )


def _printable(text: str) -> str:
    return _BAD_CHAR.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _quote(key: str) -> str:
    """A key for a message: printable, and cut when long."""
    shown = _printable(key)
    return f"'{shown[:_SHOWN_CHARS]}...'" if len(shown) > _SHOWN_CHARS else f"'{shown}'"


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
