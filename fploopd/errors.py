"""Errors that carry what a user needs to fix them: which file, which field, what was expected."""

from __future__ import annotations


class FploopdError(Exception):
    """Base of the project's errors. ``kind`` goes into ``error.json``."""

    kind = "error"

    def __init__(self, message: str, *, field: str | None = None, file: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.file = file

    def to_json(self) -> dict[str, str]:
        out = {"kind": self.kind, "error": self.message}
        if self.field is not None:
            out["field"] = self.field
        if self.file is not None:
            out["file"] = self.file
        return out


class InputError(FploopdError):
    """The input's fault (bad sidecar, unreadable or too large media): fails at once, never retried."""

    kind = "input"


class ModelError(FploopdError):
    """Weights missing or unusable."""

    kind = "model"


class Cancelled(FploopdError):
    """The user cancelled the job, or the daemon is stopping; the last checkpoint stays."""

    kind = "cancelled"
