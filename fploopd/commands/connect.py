"""``fploopd connect HEAD TAIL``: a generated bridge from one video into another, one shot."""

from __future__ import annotations

import argparse
from pathlib import Path

from fploopd.commands.oneshot import add_oneshot_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("connect", help="join HEAD to TAIL with a generated bridge (FramePackConnect), without the daemon")
    p.add_argument("head", type=Path, metavar="HEAD", help="the video that plays first (its size sets the output's)")
    p.add_argument("tail", type=Path, metavar="TAIL", help="the video that plays after the bridge")
    add_oneshot_options(p, "connect")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fploopd.commands.oneshot import run_oneshot

    return run_oneshot(args, "connect", {"head": args.head, "tail": args.tail})
