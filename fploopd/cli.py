"""The ``fploopd`` command: argument parsing, logging set-up, dispatch.

Each command lives in ``fploopd/commands/<name>.py`` with ``register(subparsers)`` and a
``run(args) -> int``; modules import their heavy dependencies inside ``run`` so that
``fploopd --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from fploopd import __version__
from fploopd.errors import FploopdError

# Command modules under fploopd.commands, in the order --help lists them.
COMMANDS = (
    "init",
    "run",
    "demo",
    "status",
    "submit",
    "retry",
    "cancel",
    "priority",
    "generate",
    "loop",
    "connect",
    "video2loop",
    "decode",
    "doctor",
    "obs",
    "journal",
    "models",
    "bench",
)


def add_root_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(os.environ.get("FPLOOPD_ROOT", ".")),
        help="the fploopd root folder (default: $FPLOOPD_ROOT or the current folder)",
    )


def _vram(value: str) -> str:
    from fploopd.engine.tiers import normalize_vram

    try:
        return normalize_vram(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_journal_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--journal",
        default=None,
        help="the journal: a postgresql://... URL shared by several hosts (default: $FPLOOPD_JOURNAL, "
        "fploopd.toml's journal, else the root's own SQLite file)",
    )


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="auto",
        help="'tiny' (embedded test family), 'auto' (FramePack weights wherever found) or a folder",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, or a comma list (default: auto)")
    parser.add_argument(
        "--vram",
        type=_vram,
        default="auto",
        help="auto (the fastest tier that fits the free memory), a tier (bf16-resident, fp8-resident, "
        "fp8-streamed, bf16-streamed; high / low), or a budget in GiB such as 12",
    )
    parser.add_argument(
        "--fp8",
        action="store_true",
        default=None,
        help="FP8 matmuls in the transformer on GPUs that have them (about 1.2x faster sections; "
        "outputs drift slightly from bf16: docs/benchmarks.md)",
    )


def build_parser(commands: tuple[str, ...] = COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fploopd", description="Unattended FramePack loop generator.")
    parser.add_argument("--version", action="version", version=f"fploopd {__version__}")
    parser.add_argument("--log-level", default=os.environ.get("FPLOOPD_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in commands:
        importlib.import_module(f"fploopd.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None, *, commands: tuple[str, ...] = COMMANDS) -> int:
    """Run one command; ``commands``: the command modules to offer (and import)."""
    parser = build_parser(commands)
    args = parser.parse_args(argv)
    from fploopd.logs import configure_logging

    configure_logging(level=args.log_level)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130
    except FploopdError as exc:
        where = ", ".join(f"{k}: {v}" for k, v in (("file", exc.file), ("field", exc.field)) if v)
        print(f"fploopd: {exc.message}" + (f" ({where})" if where else ""), file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
