"""Service glue: systemd notifications, the root lock, waking the loop, signal flags.

sd_notify is spoken directly over the ``NOTIFY_SOCKET`` datagram socket (no dependency).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fploopd.errors import FploopdError

STATUS_INTERVAL_S = 0.5


class Notifier:
    """READY=1, STATUS=..., WATCHDOG=1 (every half of WATCHDOG_USEC), STOPPING=1; silent outside systemd."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET") or None
        if address and address.startswith("@"):
            address = "\0" + address[1:]  # Linux abstract namespace
        self.address = address
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        mine = pid is None or pid == str(os.getpid())
        self.watchdog_s = int(usec) / 1e6 / 2 if usec and usec.isdigit() and int(usec) > 0 and mine else None
        self._last_ping = 0.0
        self._last_status = ""
        self._last_status_at = -STATUS_INTERVAL_S
        self._sock: socket.socket | None = None

    def send(self, **fields: str | int) -> None:
        if self.address is None or not hasattr(socket, "AF_UNIX"):
            return
        text = "\n".join(f"{k.upper()}={v}" for k, v in fields.items())
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
            self._sock.sendto(text.encode(), self.address)
        except OSError:
            pass  # systemd is gone or restarting: notifications are best effort

    def ready(self, status: str) -> None:
        self.send(ready=1, status=status, mainpid=os.getpid())

    def status(self, text: str) -> None:
        """At most every STATUS_INTERVAL_S: progress changes every step; `systemctl status` needs less."""
        now = time.monotonic()
        if text != self._last_status and now - self._last_status_at >= STATUS_INTERVAL_S:
            self._last_status, self._last_status_at = text, now
            self.send(status=text)

    def stopping(self, status: str) -> None:
        self.send(stopping=1, status=status)

    def beat(self) -> None:
        """Called from the main loop, so a hung loop stops the beat and systemd restarts us."""
        if self.watchdog_s is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_s:
            self._last_ping = now
            self.send(watchdog=1)

    def next_beat_in(self) -> float | None:
        if self.watchdog_s is None:
            return None
        return max(0.0, self._last_ping + self.watchdog_s - time.monotonic())


class Waker:
    """A socket pair the loop waits on: watchdog threads and signals write a byte to wake it."""

    def __init__(self) -> None:
        self.r, self.w = socket.socketpair()
        self.r.setblocking(False)
        self.w.setblocking(False)

    def wake(self) -> None:
        try:
            self.w.send(b"x")
        except OSError:
            pass  # full: it is awake already

    def drain(self) -> None:
        try:
            while self.r.recv(4096):
                pass
        except OSError:
            pass

    def fileno(self) -> int:
        return self.r.fileno()


class StopFlags:
    """SIGTERM/SIGINT handlers only count: 1 = warm stop, 2 = cold stop."""

    def __init__(self) -> None:
        self.requests = 0

    def install(self, waker: Waker) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a closed terminal is not a stop
        signal.set_wakeup_fd(waker.w.fileno(), warn_on_full_buffer=False)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.requests += 1

    def request(self) -> None:
        """A stop from elsewhere (the Windows service manager)."""
        self.requests += 1


def _flock(fd: int) -> int:
    """``fd``, locked exclusively without waiting; closed, and the error raised, when it cannot be."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


class RootLockedError(FploopdError):
    kind = "locked"


class RootLock:
    """One daemon per root, under a lock the OS releases with the process, so no stale file is involved.

    POSIX: ``flock`` on the state folder (``.fploopd/``) itself, which deleting a file cannot defeat;
    ``daemon.lock`` only shows the holder's pid. Where a file system cannot lock a folder (some
    network shares), the lock falls back to ``daemon.lock``. Windows: msvcrt's lock on ``daemon.lock``
    (a file open there cannot be deleted).
    """

    def __init__(self, path: Path) -> None:
        self.path = path  # .fploopd/daemon.lock
        self._fd: int | None = None  # the open, locked folder or file

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if sys.platform == "win32":
            fd = self._lock_windows()
        else:
            fd = self._lock_posix()
        if fd is None:
            return False
        self._fd = fd
        self._show_holder(f"{os.getpid()}\n")
        return True

    def _lock_posix(self) -> int | None:
        try:
            return _flock(os.open(self.path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)))
        except BlockingIOError:
            return None  # another daemon holds it
        except OSError:  # EBADF, ENOLCK, EOPNOTSUPP: this file system locks no folders
            pass
        try:
            return _flock(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644))
        except OSError:
            return None

    def _lock_windows(self) -> int | None:
        import msvcrt

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
            return fd
        except OSError:
            os.close(fd)
            return None

    def _show_holder(self, text: str) -> None:
        """Write the holder's pid into daemon.lock, for people and messages only; best effort (the
        lock does not depend on it, and a full disk must not stop the daemon)."""
        try:
            if sys.platform == "win32" and self._fd is not None:  # the locked file itself
                os.lseek(self._fd, 0, os.SEEK_SET)
                os.ftruncate(self._fd, 0)
                os.write(self._fd, text.encode())
                return
            with open(self.path, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError:
            pass

    def holder(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8").strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self._fd is not None:
            self._show_holder("")  # still under the lock: nobody else's pid is erased
            os.close(self._fd)
            self._fd = None
