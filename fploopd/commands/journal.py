"""``fploopd journal recover``: rebuild a lost or damaged journal from what the folders hold.
``fploopd journal migrate --to postgresql://...``: move a single-host SQLite journal to PostgreSQL."""

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
    migrate = actions.add_parser(
        "migrate", help="move this root's SQLite journal into an empty PostgreSQL journal, so that more hosts can join"
    )
    add_root_option(migrate)
    migrate.add_argument("--to", required=True, metavar="URL", help="the postgresql://... journal every host will use")
    migrate.set_defaults(handler=run_migrate)


def run_recover(args: argparse.Namespace) -> int:
    from fploopd.daemon.layout import Layout
    from fploopd.daemon.recover import recover_journal

    layout = Layout(args.root.absolute())
    result = recover_journal(layout)
    print(result.summary())
    print(f"the journal is {layout.journal}; start the daemon again with `fploopd run --root {layout.root}`")
    return 0


def run_migrate(args: argparse.Namespace) -> int:
    from fploopd.daemon.layout import Layout
    from fploopd.daemon.migrate import migrate
    from fploopd.daemon.pgjournal import redact
    from fploopd.daemon.settings import SettingsError
    from fploopd.daemon.stores import is_postgres

    if not is_postgres(args.to):
        raise SettingsError(f"--to must be a postgresql://... URL, not {args.to!r}", field="to")
    layout = Layout(args.root.absolute())
    result = migrate(layout, args.to)
    print(result.summary())
    print(
        f'now set journal = "{redact(args.to)}" (with its password) in {layout.root / "fploopd.toml"}, or FPLOOPD_JOURNAL, '
        "on every host, and start the daemons"
    )
    return 0
