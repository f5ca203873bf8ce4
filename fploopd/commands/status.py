"""``fploopd status``: the jobs in the journal, the drops waiting in the inbox, and the daemon."""

from __future__ import annotations

import argparse
import json
from typing import Any

from fploopd.cli import add_journal_option, add_root_option


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="jobs from the journal, drops waiting in the inbox, the daemon's workers")
    add_root_option(p)
    add_journal_option(p)
    p.add_argument(
        "--json",
        action="store_true",
        help="a JSON list of objects (id, name, pipeline, state, attempts, progress, error, outputs, ...); "
        'drops waiting in the inbox have state "waiting" and say what they wait for',
    )
    p.add_argument("job", nargs="?", help="only this job (id or name)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fploopd.daemon.control import daemon_view, find, job_status, open_journal, status_views
    from fploopd.daemon.layout import Layout
    from fploopd.daemon.recover import check_root_journal
    from fploopd.daemon.stores import is_postgres, journal_url

    layout = Layout(args.root.absolute())
    url = journal_url(layout.root, args.journal)
    if not is_postgres(url):
        check_root_journal(layout)  # a lost journal is said, not shown as "no jobs yet"
    journal = open_journal(layout, readonly=True, url=url)
    if args.job:
        views = [job_status(journal, find(journal, args.job), layout)]
    else:
        views = status_views(journal, layout)
    if args.json:
        print(json.dumps(views, indent=2))
        return 0
    if not args.job:
        print(_daemon_lines(daemon_view(journal)))
    if not views:
        print(f"no jobs yet in {layout.root}")
        return 0
    print(f"{'NAME':<24} {'STATE':<10} {'PIPELINE':<10} {'TRY':>3}  {'PROGRESS / RESULT':<40} ID")
    for v in views:
        tries = v["attempts"] + (1 if v["state"] == "running" else 0)
        print(f"{v['name'][:24]:<24} {v['state']:<10} {v['pipeline'] or '-'!s:<10} {tries:>3}  {_detail(v)[:70]:<40} {v['id'] or ''}")
    hooks = [_hook_line(v["name"], h) for v in views for h in v.get("hooks", []) if h["status"] != "done"]
    if hooks:
        print("delivery hooks not done:")
        print("\n".join(hooks))
    return 0


def _hook_line(name: str, h: dict[str, Any]) -> str:
    last = h.get("last") or {}
    why = f": {last['error']}" if last.get("error") else ""
    if h["status"] == "failed":
        return f"  {name}: hook {h['hook']} failed after {h['tries']} tries{why}"
    if h["tries"]:
        return f"  {name}: hook {h['hook']} failed {h['tries']} time(s){why}; next try at {h['next_try_at']}"
    return f"  {name}: hook {h['hook']} waiting to run"


def _daemon_lines(daemon: dict[str, Any] | None) -> str:
    if daemon is None:
        return "daemon: not running"
    if "hosts" in daemon:  # several hosts on one journal
        return "\n".join(_daemon_lines({k: v for k, v in d.items() if k != "hosts"}) for d in daemon["hosts"].values())
    where = f" on {daemon['host']}" if daemon.get("host") else ""
    lines = [f"daemon: running (pid {daemon['pid']}){where}" + (f"; paused: {daemon['paused']}" if daemon.get("paused") else "")]
    for device, w in sorted(daemon["workers"].items()):
        text = f"  worker {device}: {w['state']}"
        if w.get("silent_s"):
            text += f" for {w['silent_s']} s"
        if w.get("error"):
            text += f": {str(w['error']).splitlines()[0]}"
        lines.append(text)
    return "\n".join(lines)


def _detail(v: dict) -> str:
    from fploopd.pipelines.progress import progress_text

    if v["state"] == "running":
        text = progress_text(v["progress"])
        silent = (v["progress"] or {}).get("worker_silent_s")
        return text + (f" (worker not responding for {silent} s)" if silent else "")
    if v["state"] == "waiting":
        return v["waiting_for"]
    if v["state"] == "done":
        return v["location"]["outputs"] or ""
    if v["state"] in ("failed", "cancelled"):
        return (v["error"] or {}).get("error", "")
    if v["next_attempt_at"]:
        return f"retry at {v['next_attempt_at']}: {(v['error'] or {}).get('error', '')}"
    return "waiting for a worker"
