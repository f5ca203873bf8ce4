"""OBS over obs-websocket 5 (``obsws-python``): point a media source at a delivered loop.

``ObsUpdater`` does it off the supervisor's thread: OBS closed, unreachable or without the input is
logged and tried again after 1, 2, 4 ... s, a few times, and never fails or delays a job. A newer
loop for the same input replaces one still waiting to be shown.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger

from fploopd.daemon.hooksettings import ObsSettings

RESTART = "OBS_WEBSOCKET_MEDIA_INPUT_ACTION_RESTART"
MEDIA_SOURCE = "ffmpeg_source"  # OBS's "Media Source"
NO_SUCH_INPUT = 600  # obs-websocket's ResourceNotFound


class ObsError(Exception):
    """OBS did not do what was asked; the message says why, in plain words."""


def _quiet_library_logs() -> None:
    # obsws-python logs through the standard library, with tracebacks (and the password) at
    # connection time; fploopd says what matters itself.
    lib = logging.getLogger("obsws_python")
    lib.addHandler(logging.NullHandler())
    lib.propagate = False


@contextlib.contextmanager
def connect(settings: ObsSettings) -> Iterator[Any]:
    """A connected ``obsws_python.ReqClient``; raises ObsError saying what is wrong."""
    import obsws_python as obs
    from obsws_python.error import OBSSDKError

    _quiet_library_logs()
    try:
        client = obs.ReqClient(host=settings.host, port=settings.port, password=settings.password, timeout=settings.timeout_s)
    except ConnectionRefusedError:
        raise ObsError(f"OBS is not running, or its WebSocket server is off ({settings.url})") from None
    except OBSSDKError as exc:
        raise ObsError(f"OBS at {settings.url} refused the connection ({exc}); check [obs] password") from None
    except Exception as exc:  # noqa: BLE001 - websocket-client raises many kinds for one cause
        raise ObsError(f"cannot reach OBS at {settings.url}: {type(exc).__name__}: {exc}") from None
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.disconnect()


def _request(what: str, call: Any, *args: Any) -> Any:
    from obsws_python.error import OBSSDKRequestError

    try:
        return call(*args)
    except OBSSDKRequestError as exc:
        if exc.code == NO_SUCH_INPUT:
            raise ObsError(f"OBS has no input named {args[0]!r} (add a Media Source of that name)") from None
        raise ObsError(f"OBS refused {what}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a dropped connection mid-request
        raise ObsError(f"{what} failed: {type(exc).__name__}: {exc}") from None


def show(settings: ObsSettings, input_name: str, path: Path) -> None:
    """Make ``input_name`` play ``path``, looping, from its start."""
    with connect(settings) as client:
        _request("setting the input's file", client.set_input_settings, input_name,
                 {"is_local_file": True, "local_file": str(path), "looping": True}, True)
        _request("restarting the input", client.trigger_media_input_action, input_name, RESTART)


def input_kind(settings: ObsSettings, input_name: str) -> str:
    """The kind of ``input_name`` (``ffmpeg_source`` for a Media Source); ObsError when missing."""
    with connect(settings) as client:
        return _request("looking up the input", client.get_input_settings, input_name).input_kind


def version(settings: ObsSettings) -> str:
    with connect(settings) as client:
        v = _request("asking its version", client.get_version)
        return f"OBS {v.obs_version}, obs-websocket {v.obs_web_socket_version}"


@dataclass
class _Pending:
    path: Path
    job: str
    tries: int = 0
    due: float = 0.0


class ObsUpdater:
    """A thread that shows delivered loops in OBS, with a few tries each."""

    def __init__(self, settings: ObsSettings) -> None:
        self.settings = settings
        self.pending: dict[str, _Pending] = {}  # input name -> what it should show
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name="fploopd-obs", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def show(self, input_name: str, path: Path, job: str) -> None:
        with self.lock:
            self.pending[input_name] = _Pending(path, job, due=time.monotonic())
        self.wake.set()

    def busy(self) -> bool:
        with self.lock:
            return bool(self.pending)

    def close(self) -> None:
        self.stopping = True
        self.wake.set()
        if self.thread.is_alive():
            self.thread.join(timeout=self.settings.timeout_s + 1)

    def _loop(self) -> None:
        while not self.stopping:
            with self.lock:
                now = time.monotonic()
                due = [(name, p) for name, p in self.pending.items() if p.due <= now]
                waits = [p.due - now for p in self.pending.values() if p.due > now]
            for name, item in due:
                self._try(name, item)
            self.wake.wait(timeout=min(waits, default=60.0) if not due else 0)
            self.wake.clear()

    def _try(self, name: str, item: _Pending) -> None:
        try:
            show(self.settings, name, item.path)
        except ObsError as exc:
            self._failed(name, item, str(exc))
        except Exception as exc:  # noqa: BLE001 - OBS must never take the daemon down
            self._failed(name, item, f"{type(exc).__name__}: {exc}")
        else:
            logger.info("OBS input {!r} now plays {} ({})", name, item.path.name, item.job)
            self._forget(name, item)

    def _failed(self, name: str, item: _Pending, why: str) -> None:
        item.tries += 1
        if item.tries >= self.settings.tries:
            logger.error("OBS input {!r} was not updated to {} after {} tries: {}", name, item.job, item.tries, why)
            self._forget(name, item)
            return
        delay = 2.0 ** (item.tries - 1)
        logger.warning("OBS input {!r} not updated to {} ({}); trying again in {:.0f} s", name, item.job, why, delay)
        item.due = time.monotonic() + delay

    def _forget(self, name: str, item: _Pending) -> None:
        with self.lock:
            if self.pending.get(name) is item:  # not replaced by a newer loop meanwhile
                del self.pending[name]
