"""A delivery plan: the file moves a state transition implies, stored in the journal with it
(docs/design.md §4) and carried out by ``deliver.settle``.

The stored JSON is ``{"write": {"path", "json"}?, "moves": [{"src", "dst"}], "cleanup", "rehash"?}``,
paths relative to the root; ``to_json`` and ``from_json`` keep that shape, so journals written by
an older fploopd load as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from fploopd.errors import ErrorRecord


@dataclass(frozen=True)
class Move:
    """One whole-folder (or file) rename, relative to the root."""

    src: str
    dst: str

    @property
    def top(self) -> str:
        """The root folder it goes to (``outbox``, ``archive``, ``failed``, ``.fploopd``)."""
        return self.dst.split("/", 1)[0]


@dataclass(frozen=True)
class ErrorFile:
    """``error.json`` written into a failed or cancelled job's inputs before they move."""

    path: str
    job: str
    error: ErrorRecord

    def document(self) -> dict[str, str]:
        """The file's content: exactly job, kind, error, and field and file when known."""
        return {"job": self.job, **self.error.to_json()}


@dataclass(frozen=True)
class DeliveryPlan:
    moves: tuple[Move, ...]
    cleanup: bool = False  # remove the job's checkpoints once delivered
    write: ErrorFile | None = None
    rehash: bool = False  # record the inputs' sizes and hashes again (a retry brought them back)

    def delivered_to(self, folder: str) -> str | None:
        """Where the job's folder that goes to ``folder`` (outbox, archive, failed) lands. Found by
        destination, since older journals list a done job's moves in the other order."""
        return next((move.dst for move in self.moves if move.top == folder), None)

    def with_dst(self, index: int, dst: str) -> DeliveryPlan:
        """The same plan with move ``index`` going to ``dst`` instead (its first choice was taken)."""
        moves = list(self.moves)
        moves[index] = replace(moves[index], dst=dst)
        return replace(self, moves=tuple(moves))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.write is not None:
            out["write"] = {"path": self.write.path, "json": self.write.document()}
        out["moves"] = [{"src": move.src, "dst": move.dst} for move in self.moves]
        out["cleanup"] = self.cleanup
        if self.rehash:
            out["rehash"] = True
        return out

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> DeliveryPlan:
        write = value.get("write")
        return cls(
            moves=tuple(Move(str(move["src"]), str(move["dst"])) for move in value.get("moves") or []),
            cleanup=bool(value.get("cleanup")),
            write=None if write is None else _error_file(write),
            rehash=bool(value.get("rehash")),
        )


def _error_file(write: dict[str, Any]) -> ErrorFile:
    document = write.get("json") or {}
    return ErrorFile(path=str(write["path"]), job=str(document.get("job") or ""), error=ErrorRecord.from_json(document))
