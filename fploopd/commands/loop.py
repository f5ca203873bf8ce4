"""``fploopd loop IMAGE``: a seamless loop from one image, one shot, no daemon."""

from __future__ import annotations

import argparse
from pathlib import Path

from fploopd.commands.oneshot import add_oneshot_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("loop", help="a seamless loop from IMAGE (FramePackLoop), without the daemon")
    p.add_argument("image", type=Path, metavar="IMAGE", help="the start image")
    add_oneshot_options(p, "loop")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fploopd.commands.oneshot import run_oneshot

    return run_oneshot(args, "loop", {"image": args.image})
