"""``fploopd obs test``: point each OBS input of ``[obs] inputs`` at its channel's newest loop now."""

from __future__ import annotations

import argparse

from fploopd.cli import add_root_option


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("obs", help="OBS: show each channel's newest loop in its input now ([obs] in fploopd.toml)")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    test = actions.add_parser("test", help="point each configured OBS input at its channel's newest loop")
    add_root_option(test)
    test.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fploopd.daemon.control import open_journal
    from fploopd.daemon.journal import JobState
    from fploopd.daemon.latest import newest_clip
    from fploopd.daemon.layout import Layout
    from fploopd.daemon.obs import ObsError, show
    from fploopd.daemon.settings import SETTINGS_FILE, load_settings

    settings = load_settings(args.root.absolute())
    layout = Layout(settings.root)
    if not settings.obs.enabled:
        print(f"no OBS inputs configured: add [obs] inputs = {{ loop = \"Loop\" }} to {layout.root / SETTINGS_FILE}")
        return 1
    journal = open_journal(layout, readonly=True)
    done = journal.jobs((JobState.DONE,)) if journal is not None else []
    problems = 0
    for channel, name in sorted(settings.obs.inputs.items()):
        clip = newest_clip(layout, done, channel)
        if clip is None:
            print(f"{channel}: no loop delivered yet; OBS input {name!r} left as it is")
            continue
        try:
            show(settings.obs, name, clip)
        except ObsError as exc:
            print(f"{channel}: OBS input {name!r} not updated: {exc}")
            problems += 1
        else:
            print(f"{channel}: OBS input {name!r} now plays {clip}")
    return 1 if problems else 0
