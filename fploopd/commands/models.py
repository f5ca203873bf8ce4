"""``fploopd models``: where each model component was found, and what is missing."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from fploopd.cli import add_model_options, add_root_option


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list where the model weights were found (and what is missing)",
        description="List each FramePack component, where it was found, and what is missing. "
        "Exits 1 when a required component is missing.",
    )
    add_root_option(parser)
    add_model_options(parser)
    parser.add_argument(
        "--search",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="also look in DIR first (a weights folder, an HF cache or a FramePack install); repeatable",
    )
    parser.add_argument("--download", action="store_true", help="fetch missing components from the Hugging Face Hub first")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fploopd.engine.sources import describe, places_for, resolve

    if args.download:
        resolve(args.model, allow_download=True, search=args.search)
    rows = describe(args.model, search=args.search)
    missing = [r for r in rows if r["status"] == "missing"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 1 if missing else 0
    places, source = places_for(args.model, args.search)
    print(_table(rows))
    print(f"\nmodel: {source}; looked in, in order:")
    for place in places:
        print(f"  {place}")
    if missing:
        names = ", ".join(str(r["component"]) for r in missing)
        print(
            f"\nmissing: {names}. Point --model or FPLOOPD_MODELS at a folder holding them (or add --search DIR), "
            "or run `fploopd models --download` to fetch them from the Hugging Face Hub."
        )
        return 1
    return 0


def _table(rows: list[dict[str, Any]]) -> str:
    header = ("component", "status", "where", "source")
    lines = [(str(r["component"]), str(r["status"]), r["path"] or f"(wanted {r['repo']})", r["source"] or "-") for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header[:-1])]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, [*widths, 0])).rstrip()]
    for row, line in zip(rows, lines):
        out.append("  ".join(c.ljust(w) for c, w in zip(line, [*widths, 0])).rstrip())
        if row["status"] != "found" and row["detail"]:
            out += [f"    incomplete: {d}" for d in str(row["detail"]).split("; ")]
    return "\n".join(out)
