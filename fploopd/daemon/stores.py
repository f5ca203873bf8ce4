"""Which journal a root uses: SQLite in ``.fploopd/`` (one host, the default) or PostgreSQL
(``journal = "postgresql://..."``: several hosts on one shared root). Everything that opens the
journal comes through here."""

from __future__ import annotations

import os
from pathlib import Path

from fploopd.daemon.journal import Journal
from fploopd.daemon.layout import Layout
from fploopd.daemon.settings import ENV_PREFIX, SettingsError, load_settings

SCHEMES = ("postgresql://", "postgres://")


def is_postgres(url: str | None) -> bool:
    return bool(url) and str(url).startswith(SCHEMES)


def journal_url(root: Path, flag: str | None = None) -> str:
    """For the commands that need only the journal (status, cancel, retry, priority): the ``journal``
    setting, with its usual precedence (``--journal``, FPLOOPD_JOURNAL, fploopd.toml; "" = the root's
    SQLite file). A settings file the daemon would refuse leaves the flag and the environment: those
    commands must still show the jobs (the daemon and ``doctor`` say what is wrong with the file)."""
    try:
        return load_settings(Path(root), {"journal": flag}).journal
    except SettingsError:
        return flag or os.environ.get(f"{ENV_PREFIX}JOURNAL", "")


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
