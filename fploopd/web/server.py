"""The web server's address (checked before the daemon starts) and its thread."""

from __future__ import annotations

import ipaddress
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loguru import logger

from fploopd.daemon.settings import Settings, SettingsError

if TYPE_CHECKING:
    from fploopd.daemon.supervisor import Supervisor

RESTART_S = 5.0  # after the server stopped or crashed, before it starts again
LOOPBACK_NAMES = ("localhost",)


@dataclass(frozen=True)
class WebAddress:
    host: str
    port: int
    token: str

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def web_address(settings: Settings) -> WebAddress:
    """``http`` as host and port. A non-loopback address without a token is refused: the page can
    submit, cancel and retry jobs, so nobody else on the network may reach it unasked."""
    text = settings.http.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise SettingsError(f"http = {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8787", field="http")
    address = WebAddress(host.strip("[]"), int(port_text), settings.http_token)
    if not address.loopback and not address.token:
        raise SettingsError(
            f"http = {text!r} is reachable from other machines: set http_token in fploopd.toml or FPLOOPD_HTTP_TOKEN "
            "(every request then needs it), or serve on 127.0.0.1",
            field="http_token",
        )
    return address


def serve_in_thread(supervisor: Supervisor, address: WebAddress) -> threading.Thread:
    """Start the server in a daemon thread of this process. If it crashes or stops it is logged and
    started again; nothing it does can stop the supervisor's loop or a job."""
    thread = threading.Thread(target=_serve_forever, args=(supervisor, address), name="fploopd-http", daemon=True)
    thread.start()
    return thread


def _serve_forever(supervisor: Supervisor, address: WebAddress) -> None:
    import uvicorn

    from fploopd.web.app import create_app

    while True:
        try:
            app = create_app(supervisor, address)
            config = uvicorn.Config(
                app, host=address.host, port=address.port, log_config=None, access_log=False, lifespan="off",
                timeout_graceful_shutdown=1,
            )
            logger.info("web page on http://{}:{}/", f"[{address.host}]" if ":" in address.host else address.host, address.port)
            uvicorn.Server(config).run()
            logger.error("the web server stopped; starting it again in {:.0f} s (jobs go on)", RESTART_S)
        except BaseException as exc:  # noqa: BLE001 - SystemExit too (uvicorn exits when it cannot bind)
            logger.opt(exception=exc).error("the web server failed ({}); starting it again in {:.0f} s (jobs go on)", exc, RESTART_S)
        time.sleep(RESTART_S)
