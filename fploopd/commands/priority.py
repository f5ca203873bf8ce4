"""``fploopd priority JOB N``: a queued job's priority (higher runs first), as the web page's button."""

from __future__ import annotations

import argparse

from fploopd.cli import add_journal_option, add_root_option


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("priority", help="set a queued job's priority (higher runs first, -100 to 100)")
    add_root_option(p)
    add_journal_option(p)
    p.add_argument("job", help="job id or name")
    p.add_argument("priority", type=int, help="the new priority")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fploopd.daemon.control import open_journal, set_priority
    from fploopd.daemon.layout import Layout
    from fploopd.daemon.stores import journal_url

    layout = Layout(args.root.absolute())
    journal = open_journal(layout, url=journal_url(layout.root, args.journal))
    job = set_priority(journal, args.job, args.priority)  # type: ignore[arg-type] - find() reports a missing journal
    print(f"job {job.name} ({job.id}) has priority {job.priority}")
    return 0
