"""Which journal a root uses: SQLite in ``.fploopd/`` (one host, the default) or PostgreSQL
(``journal = "postgresql://..."``: several hosts on one shared root). Everything that opens the
journal comes through here."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from fploopd.daemon.journal import Journal
from fploopd.daemon.layout import Layout

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

JOURNAL_ENV = "FPLOOPD_JOURNAL"
SCHEMES = ("postgresql://", "postgres://")


def is_postgres(url: str | None) -> bool:
    return bool(url) and str(url).startswith(SCHEMES)


def journal_url(root: Path, flag: str | None = None) -> str:
    """For the commands that do not load every setting (status, cancel, retry): ``--journal``, else
    FPLOOPD_JOURNAL, else ``journal`` in the root's fploopd.toml, else "" (the root's SQLite)."""
    if flag:
        return flag
    if os.environ.get(JOURNAL_ENV):
        return os.environ[JOURNAL_ENV]
    path = Path(root) / "fploopd.toml"
    try:
        value = tomllib.loads(path.read_text(encoding="utf-8")).get("journal", "")
    except (OSError, ValueError):
        return ""  # no settings file, or one the daemon reports itself
    return value if isinstance(value, str) else ""


def open_store(
    layout: Layout,
    url: str,
    who: str,
    *,
    check: bool = False,
    readonly: bool = False,
    host: str | None = None,
    lease_s: float = 60.0,
) -> Journal:
    """The journal ``url`` names ("" = the root's SQLite file)."""
    if is_postgres(url):
        from fploopd.daemon.pgjournal import PgJournal

        return PgJournal(url, who, check=check, readonly=readonly, host=host, lease_s=lease_s)
    if readonly:
        return Journal.open_readonly(layout.journal, who)
    return Journal(layout.journal, who, check=check, host=host, lease_s=lease_s)
