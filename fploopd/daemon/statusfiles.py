"""The queue in the share: ``status.json`` (the objects of ``fploopd status --json``, drops waiting in
the inbox included, plus the daemon's own state) and ``status.html`` beside it, a page that reads
nothing but itself and reloads itself, for people who only see the shared folder.

A thread of the supervisor's process writes them with a read-only journal connection of its own,
atomically, when what they say has changed and at most every ``WRITE_S``: a slow share never holds
up the loop, and a failing write is logged once and tried again.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from loguru import logger

from fploopd import __version__
from fploopd.daemon.control import daemon_view, open_journal, status_views
from fploopd.daemon.layout import Layout
from fploopd.fsutil import write_bytes_atomic
from fploopd.pipelines.manifest import iso_time
from fploopd.pipelines.progress import progress_text

WRITE_S = 3.0
PAGE_REFRESH_S = 5
PAGE_FINISHED = 50  # finished jobs the page lists (status.json has them all)
TEMPLATES = Path(__file__).parent / "templates"


def document(layout: Layout, journal_url: str = "") -> dict[str, Any]:
    """What status.json holds: ``jobs`` as ``status --json`` lists them, and ``daemon``.
    ``journal_url``: a PostgreSQL journal shared by several hosts ("" = the root's SQLite)."""
    journal = open_journal(layout, "status-files", readonly=True, url=journal_url)
    try:
        return {"daemon": daemon_view(journal), "jobs": status_views(journal, layout)}
    finally:
        if journal is not None:
            journal.close()


def render_page(doc: dict[str, Any], written_at: float) -> str:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"]))
    jobs = doc["jobs"]
    finished = [j for j in jobs if j["state"] in ("done", "failed", "cancelled")]
    finished.sort(key=lambda j: j.get("finished_at") or "", reverse=True)
    return env.get_template("status.html").render(
        daemon=doc["daemon"],
        running=[j for j in jobs if j["state"] == "running"],
        queued=sorted((j for j in jobs if j["state"] == "queued"), key=lambda j: -j.get("priority", 0)),
        waiting=[j for j in jobs if j["state"] == "waiting"],
        finished=finished[:PAGE_FINISHED],
        more=max(0, len(finished) - PAGE_FINISHED),
        progress_text=progress_text,
        written=iso_time(written_at),
        refresh_s=PAGE_REFRESH_S,
        version=__version__,
    )


class StatusFiles:
    def __init__(self, layout: Layout, journal_url: str = "") -> None:
        self.layout = layout
        self.journal_url = journal_url
        self.last: str | None = None
        self.failing: str | None = None
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="status-files", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Stop the thread after a last write (the daemon says it stopped)."""
        self.stop_event.set()
        self.thread.join(10)
        self.write()

    def _run(self) -> None:
        while not self.stop_event.wait(WRITE_S):
            self.write()

    def write(self) -> None:
        try:
            doc = document(self.layout, self.journal_url)
            text = json.dumps(doc, indent=2)
            if text == self.last:
                return
            now = time.time()
            write_bytes_atomic(self.layout.status_json, (text + "\n").encode())
            write_bytes_atomic(self.layout.status_html, render_page(doc, now).encode())
            self.last, self.failing = text, None
        except Exception as exc:  # noqa: BLE001 - a full disk or a gone share: status is a courtesy, jobs go on
            text = f"{type(exc).__name__}: {exc}"
            if text != self.failing:
                logger.warning("cannot write {}: {}", self.layout.status_json, text)
            self.failing = text
