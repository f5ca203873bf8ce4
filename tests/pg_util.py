"""A throwaway PostgreSQL server for the tests: Debian's ``postgresql`` package, ``initdb`` into a
temporary folder as an unprivileged user (the server refuses to run as root), Unix socket only in
that folder (no TCP), one fresh database per test. ``.ci/run`` installs the package when missing.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

USER = "fploopd"
_names = itertools.count(1)


def bindir() -> Path | None:
    """The newest installed server's programs (Debian keeps them out of PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_owner() -> list[str]:
    """The prefix that runs a server program as ``nobody`` when the tests run as root."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


class PgServer:
    def __init__(self, fsync: bool = False) -> None:
        """``fsync``: as a real server would (off for the tests' speed: nothing here must survive a power cut)."""
        self.fsync = fsync
        programs = bindir()
        if programs is None:
            pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run does it)")
        self.bin = programs
        # Under /tmp with a short name: a Unix socket path has a limit of about 100 bytes.
        self.base = Path(tempfile.mkdtemp(prefix="fploopd-pg-"))
        self.data = self.base / "data"
        if os.geteuid() == 0:
            os.chown(self.base, _uid("nobody"), _gid("nogroup"))
        self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions")
        self.start()

    def _run(self, program: str, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*_as_owner(), str(self.bin / program), *args], capture_output=True, text=True, check=False, cwd=self.base)
        if result.returncode != 0:
            raise RuntimeError(f"{program} failed: {result.stdout}\n{result.stderr}")
        return result

    def start(self) -> None:
        options = f"-c listen_addresses='' -c unix_socket_directories={self.base} -c max_connections=200"
        if not self.fsync:
            options += " -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.base / "server.log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@/{database}?host={self.base}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(_names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


def _uid(name: str) -> int:
    import pwd

    return pwd.getpwnam(name).pw_uid


def _gid(name: str) -> int:
    import grp

    return grp.getgrnam(name).gr_gid


_shared: PgServer | None = None


def shared() -> PgServer:
    """One server for the whole test session (started on first use, stopped at exit)."""
    global _shared
    if _shared is None:
        import atexit

        _shared = PgServer()
        atexit.register(_shared.close)
    return _shared


def rows(url: str, sql: str) -> list[dict]:
    """Rows of a query, read directly (the tests' polling)."""
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        return list(conn.execute(sql))
