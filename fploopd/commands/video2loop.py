"""``fploopd video2loop VIDEO``: make a video loop by bridging its end to its start, one shot."""

from __future__ import annotations

import argparse
from pathlib import Path

from fploopd.commands.oneshot import add_oneshot_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("video2loop", help="loop VIDEO with a generated bridge from its end to its start, without the daemon")
    p.add_argument("video", type=Path, metavar="VIDEO", help="the video to loop")
    add_oneshot_options(p, "video2loop")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fploopd.commands.oneshot import run_oneshot

    return run_oneshot(args, "video2loop", {"video": args.video})
