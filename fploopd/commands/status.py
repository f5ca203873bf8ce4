"""``fploopd status``: the jobs in the journal."""

from __future__ import annotations

import argparse
import json

from fploopd.cli import add_root_option


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="jobs from the journal")
    add_root_option(p)
    p.add_argument("--json", action="store_true", help="a JSON list of objects (id, name, pipeline, state, attempts, progress, error, outputs, ...)")
    p.add_argument("job", nargs="?", help="only this job (id or name)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fploopd.daemon.control import find, job_view, open_journal
    from fploopd.daemon.layout import Layout

    layout = Layout(args.root.absolute())
    journal = open_journal(layout)
    if args.job:
        jobs = [find(journal, args.job)]
    else:
        jobs = journal.jobs() if journal is not None else []
    views = [job_view(j, layout) for j in jobs]
    if args.json:
        print(json.dumps(views, indent=2))
        return 0
    if not views:
        print(f"no jobs yet in {layout.root}")
        return 0
    print(f"{'NAME':<24} {'STATE':<10} {'PIPELINE':<10} {'TRY':>3}  {'PROGRESS / RESULT':<40} ID")
    for v in views:
        print(f"{v['name'][:24]:<24} {v['state']:<10} {str(v['pipeline'] or '-'):<10} {v['attempts']:>3}  {_detail(v)[:60]:<40} {v['id']}")
    return 0


def _detail(v: dict) -> str:
    if v["state"] == "running":
        p = v["progress"] or {}
        return f"{p.get('phase', 'starting')} section {p.get('section', 0)}/{p.get('sections', 0)} step {p.get('step', 0)}/{p.get('steps', 0)}"
    if v["state"] == "done":
        return v["location"]["outputs"] or ""
    if v["state"] in ("failed", "cancelled"):
        return (v["error"] or {}).get("error", "")
    if v["next_attempt_at"]:
        return f"retry at {v['next_attempt_at']}: {(v['error'] or {}).get('error', '')}"
    return "waiting for a worker"
