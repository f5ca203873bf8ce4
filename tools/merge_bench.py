"""Merge bench JSON files of one machine (later files win per figure) into one document."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def merge(paths: list[Path]) -> dict:
    out: dict = {}
    for path in paths:
        doc = json.loads(path.read_text())
        results = {**out.get("results", {}), **doc["results"]}
        errors = {**out.get("errors", {}), **doc.get("errors", {})}
        notes = out.get("notes", []) + [n for n in doc.get("notes", []) if n not in out.get("notes", [])]
        commands = out.get("commands", []) + [doc.get("command", "")]
        applied = {**out.get("applied", {}), **doc.get("applied", {})}
        out = {**out, **doc, "results": results, "errors": errors, "notes": notes, "commands": commands, "applied": applied}
    return out


if __name__ == "__main__":
    *inputs, target = sys.argv[1:]
    Path(target).write_text(json.dumps(merge([Path(p) for p in inputs]), indent=2) + "\n")
