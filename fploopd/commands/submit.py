"""``fploopd submit FILE...``: copy media plus a sidecar into the inbox the safe way (sidecar last)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fploopd.cli import add_root_option
from fploopd.spec import PIPELINES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="copy media and a sidecar into the inbox (the sidecar last)")
    add_root_option(p)
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="an image (loop), a video (video2loop), or head and tail videos (connect)")
    p.add_argument("--pipeline", choices=PIPELINES, help="default: from the files")
    p.add_argument("--prompt", default="", help="what should happen in the video")
    p.add_argument("--profile", help="a profile name (profiles/NAME.json)")
    p.add_argument("--seed", type=int)
    p.add_argument("--priority", type=int, help="higher runs first")
    p.add_argument("--name", help="job name (default: the first file's name)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help='any other sidecar field, VALUE as JSON where it parses (--set steps=16 --set outputs=["mp4","webp"])',
    )
    p.set_defaults(handler=run)


def _value(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def run(args: argparse.Namespace) -> int:
    from fploopd.daemon.layout import Layout
    from fploopd.daemon.submit import submit
    from fploopd.errors import InputError

    fields: dict[str, object] = {"prompt": args.prompt}
    for key in ("profile", "seed", "priority"):
        if getattr(args, key) is not None:
            fields[key] = getattr(args, key)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--set {item!r}: expected KEY=VALUE", field=key)
        fields[key.strip()] = _value(value)
    layout = Layout(args.root.absolute())
    sidecar, _content = submit(layout, [f.absolute() for f in args.files], pipeline=args.pipeline, name=args.name, fields=fields)
    print(f"submitted {sidecar}")
    return 0
