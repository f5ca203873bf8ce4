"""``fploopd init``: make a root (folders, fploopd.toml, profiles); safe to run again."""

from __future__ import annotations

import argparse

from fploopd.cli import add_root_option


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="create a root: fploopd.toml, inbox/, outbox/, failed/, archive/, profiles/")
    add_root_option(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fploopd.daemon.rootinit import init_root

    root = args.root.absolute()
    created = init_root(root)
    for item in created:
        print(f"created {root / item}")
    print(f"{root} is ready" + ("" if created else " (nothing to create)") + ": drop files into its inbox/ and run `fploopd run`")
    return 0
