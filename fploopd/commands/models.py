"""``fploopd models``: where each model component was found, what is missing, and the LoRAs found
in ``<root>/loras`` (or ``--loras DIR``) with their format, rank and how many modules they patch."""

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
    parser.add_argument(
        "--loras",
        type=Path,
        default=None,
        metavar="DIR",
        help="list the LoRA files in DIR (default: <root>/loras and the lora_dirs of fploopd.toml)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fploopd.engine.sources import describe, places_for, resolve

    if args.download:
        resolve(args.model, allow_download=True, search=args.search)
    rows = describe(args.model, search=args.search)
    missing = [r for r in rows if r["status"] == "missing"]
    by_folder = {folder: lora_rows(folder, _transformer_dir(rows)) for folder in lora_folders(args)}
    loras = [row for found in by_folder.values() for row in found]
    if args.json:
        print(json.dumps(rows + loras, indent=2))
        return 1 if missing else 0
    places, source = places_for(args.model, args.search)
    print(_table(rows))
    for folder, found in by_folder.items():
        print(f"\nLoRAs in {folder}:")
        print(_lora_table(found) if found else "  (none)")
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


# --- LoRAs ------------------------------------------------------------------------------------


def lora_folders(args: argparse.Namespace) -> list[Path]:
    """``--loras DIR``, else the folders the daemon looks in (``loras/``, then ``lora_dirs``)."""
    from fploopd.daemon.layout import Layout
    from fploopd.daemon.loras import lora_folders as daemon_folders
    from fploopd.daemon.settings import load_settings

    if args.loras is not None:
        return [Path(args.loras)]
    root = Path(args.root)
    return [f for f in daemon_folders(load_settings(root), Layout(root)) if f.is_dir()]


def _transformer_dir(rows: list[dict[str, Any]]) -> Path | None:
    found = [r["path"] for r in rows if r["component"] == "transformer" and r["status"] == "found" and r["path"]]
    return Path(found[0]) if found else None


def lora_rows(folder: Path, transformer: Path | None) -> list[dict[str, Any]]:
    """One row per LoRA file in ``folder`` (JSON-able, ``component: "lora"``): its format, rank and
    the modules it patches, checked against the model's transformer (built on the ``meta`` device:
    no weights) when one was found. A file that cannot be used says why."""
    from fploopd.engine.lora import LinearIndex, LoraError, load_lora, resolve_lora

    index = LinearIndex.of(_meta_transformer(transformer)) if transformer is not None else None
    rows = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        row: dict[str, Any] = {"component": "lora", "status": "ok", "path": str(path), "format": None, "rank": None,
                               "modules": None, "detail": ""}  # fmt: skip
        try:
            lora = load_lora(path)
            row.update(format=lora.format.describe(), rank=lora.rank, modules=len(lora.groups))
            if index is None:
                row["detail"] = "not checked against a transformer (none found)"
            else:
                row["modules"] = len(resolve_lora(lora, index).patches)
        except LoraError as exc:
            row.update(status="error", detail=exc.message)
        rows.append(row)
    return rows


def _meta_transformer(folder: Path) -> Any:
    import torch
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    with torch.device("meta"):
        return HunyuanVideoFramepackTransformer3DModel.from_config(config)


def _lora_table(rows: list[dict[str, Any]]) -> str:
    header = ("file", "format", "rank", "modules")
    lines = [(Path(r["path"]).name, r["format"] or "-", str(r["rank"] or "-"), str(r["modules"] or "-")) for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    out = ["  " + "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    for row, line in zip(rows, lines):
        out.append("  " + "  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
        if row["detail"]:
            out.append(f"    {row['status']}: {row['detail']}")
    return "\n".join(out)
