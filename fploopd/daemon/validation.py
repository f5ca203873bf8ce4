"""Pydantic validation errors as one ``InputError`` a user can act on."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from fploopd.errors import InputError
from fploopd.spec import MEDIA_FIELD_NAMES


def translate(exc: ValidationError, name: str, what: str = "") -> InputError:
    """One InputError for a pydantic error: ``loc`` becomes the field, messages say what was expected."""
    by_field: dict[str, list[dict[str, Any]]] = {}
    # Unknown keys first: a typo ('promt') also shows as the real key missing.
    for err in sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden"):
        by_field.setdefault(str(err["loc"][0]) if err["loc"] else "", []).append(err)
    problems = [_describe(field, errs) for field, errs in by_field.items()]
    first = next(iter(by_field)) or _named_field(by_field[""][0])
    return InputError(f"{name}: {what}{'; '.join(problems)}", field=first or None, file=name)


def _named_field(err: dict[str, Any]) -> str:
    """Checks across fields (JobSpec's model validators) start their message with the field to fix."""
    head = _message(err).split(":", 1)[0]
    return head if head.isidentifier() else ""


def _describe(field: str, errs: list[dict[str, Any]]) -> str:
    err = errs[0]
    if err["type"] == "extra_forbidden":
        return f"unknown key '{field}'"
    if err["type"] == "missing":
        return f"missing required key '{field}'"
    if field in MEDIA_FIELD_NAMES and err["type"] == "string_pattern_mismatch":
        return (
            f"{field}: {json.dumps(err['input'])} must be a bare file name in the sidecar's folder "
            "(no folders, no '..', not absolute, not hidden)"
        )
    if not field:  # a check across fields: its message says it all, the whole input would not help
        return "; ".join(dict.fromkeys(_message(e) for e in errs))
    # A union (teacache: bool | float) reports one error per member: the constraint says most.
    specific = [e for e in errs if not e["type"].endswith("_type")] or errs
    messages = "; or ".join(dict.fromkeys(_message(e) for e in specific))
    return f"{field}: {messages}, got {_shorten(json.dumps(err.get('input'), default=str))}"


def _shorten(text: str, limit: int = 100) -> str:
    """A value as the message quotes it: a 4,000-character prompt is not worth repeating whole."""
    return text if len(text) <= limit else f"{text[: limit - 20]}... ({len(text)} characters)"


def _message(err: dict[str, Any]) -> str:
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")
