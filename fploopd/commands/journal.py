"""``fploopd journal recover``: rebuild a lost or damaged journal from what the folders hold."""

from __future__ import annotations

import argparse

from fploopd.cli import add_root_option


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("journal", help="look after the journal: rebuild it from the folders when lost")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    recover = actions.add_parser(
        "recover",
        help="rebuild the journal from outbox/ and failed/ (a damaged journal is moved aside, never deleted)",
    )
    add_root_option(recover)
    recover.set_defaults(handler=run_recover)


def run_recover(args: argparse.Namespace) -> int:
    from fploopd.daemon.layout import Layout
    from fploopd.daemon.recover import recover_journal

    layout = Layout(args.root.absolute())
    result = recover_journal(layout)
    print(result.summary())
    print(f"the journal is {layout.journal}; start the daemon again with `fploopd run --root {layout.root}`")
    return 0
