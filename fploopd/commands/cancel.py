"""``fploopd cancel JOB``: a queued job is cancelled at once, a running one at its next step.

A cancelled job's inputs go to failed/<name>/ with an error.json of kind "cancelled".
"""

from __future__ import annotations

import argparse

from fploopd.cli import add_journal_option, add_root_option


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cancel", help="stop a queued or running job (its inputs go to failed/<name>/)")
    add_root_option(p)
    add_journal_option(p)
    p.add_argument("job", help="job id or name")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fploopd.daemon.control import cancel, open_journal, settle_if_no_daemon, where
    from fploopd.daemon.journal import JobState
    from fploopd.daemon.layout import Layout
    from fploopd.daemon.stores import journal_url

    layout = Layout(args.root.absolute())
    journal = open_journal(layout, url=journal_url(layout.root, args.journal))
    job = cancel(journal, layout, args.job)  # type: ignore[arg-type] - find() reports a missing journal
    assert journal is not None
    if job.state is JobState.CANCELLED:
        settle_if_no_daemon(layout, journal)
        print(f"job {job.name} ({job.id}) cancelled; its files go to {where(job, layout)['inputs']}")
    else:
        print(f"job {job.name} ({job.id}) is running: it stops at the next step, then its files go to failed/")
    return 0
