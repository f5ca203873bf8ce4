"""Errors that carry what a user needs to fix them: which file, which field, what was expected."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ErrorRecord:
    """What a job's failure says, as the journal, ``fploopd status --json`` and ``error.json`` show it."""

    kind: str
    error: str
    field: str | None = None
    file: str | None = None

    def to_json(self) -> dict[str, str]:
        """``{"kind", "error"}``, with ``field`` and ``file`` only when known (a contract: status, error.json)."""
        out = {"kind": self.kind, "error": self.error}
        if self.field is not None:
            out["field"] = self.field
        if self.file is not None:
            out["file"] = self.file
        return out

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> ErrorRecord:
        """Read back what ``to_json`` wrote, or an ``error.json`` found in failed/ (a missing kind is "error")."""
        field, file = value.get("field"), value.get("file")
        return cls(
            kind=str(value.get("kind") or "error"),
            error=str(value.get("error") or ""),
            field=None if field is None else str(field),
            file=None if file is None else str(file),
        )


class FploopdError(Exception):
    """Base of the project's errors. ``kind`` goes into ``error.json``."""

    kind = "error"

    def __init__(self, message: str, *, field: str | None = None, file: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.file = file

    def record(self) -> ErrorRecord:
        return ErrorRecord(self.kind, self.message, field=self.field, file=self.file)


class InputError(FploopdError):
    """The input's fault (bad sidecar, unreadable or too large media): fails at once, never retried."""

    kind = "input"


class ModelError(FploopdError):
    """Weights missing or unusable."""

    kind = "model"


class Cancelled(FploopdError):
    """The user cancelled the job, or the daemon is stopping; the last checkpoint stays."""

    kind = "cancelled"
