"""``fploopd retry JOB``: queue a failed job again; its files come back from failed/."""

from __future__ import annotations

import argparse

from fploopd.cli import add_journal_option, add_root_option


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("retry", help="re-queue a failed job (its inputs come back from failed/)")
    add_root_option(p)
    add_journal_option(p)
    p.add_argument("job", help="job id or name")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fploopd.daemon.control import open_journal, retry, settle_if_no_daemon
    from fploopd.daemon.layout import Layout
    from fploopd.daemon.stores import journal_url

    layout = Layout(args.root.absolute())
    journal = open_journal(layout, url=journal_url(layout.root, args.journal))
    job = retry(journal, layout, args.job)  # type: ignore[arg-type] - find() reports a missing journal
    assert journal is not None
    here = settle_if_no_daemon(layout, journal)
    print(f"job {job.name} ({job.id}) queued again" + ("; it runs at the next `fploopd run`" if here else "; the daemon picks it up"))
    return 0
