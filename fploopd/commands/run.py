"""``fploopd run``: the daemon in the foreground (systemd and the Windows service run this)."""

from __future__ import annotations

import argparse

from fploopd.cli import add_journal_option, add_model_options, add_root_option


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="the daemon: watch the inbox, make the videos, deliver them")
    add_root_option(p)
    add_model_options(p)
    add_journal_option(p)
    p.add_argument("--host", default=None, help="this machine's name in a shared journal (default: its host name)")
    p.add_argument("--once", action="store_true", help="process what is in the inbox now (waiting for it to settle), then exit")
    p.add_argument("--poll", action="store_true", default=None, help="poll the inbox (SMB/NFS shares send no events)")
    p.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="also serve the web page, the JSON API and /metrics (e.g. 127.0.0.1:8787); "
        "any address but loopback needs http_token or FPLOOPD_HTTP_TOKEN",
    )
    # None = not given, so fploopd.toml and FPLOOPD_* decide.
    p.set_defaults(handler=run, model=None, device=None, vram=None, fp8=None, journal=None, host=None)


def settings_from(args: argparse.Namespace, **extra: object):
    from fploopd.daemon.settings import load_settings

    flags = {
        "model": args.model, "device": args.device, "vram": args.vram, "fp8": args.fp8, "poll": getattr(args, "poll", None),
        "http": getattr(args, "http", None), "journal": getattr(args, "journal", None), "host": getattr(args, "host", None),
        **extra,
    }
    return load_settings(args.root.absolute(), flags)


def configure_daemon_logging(args: argparse.Namespace, settings) -> None:
    """Stderr plus a rotating file under .fploopd/logs; --log-level wins over the setting."""
    from fploopd.daemon.layout import Layout
    from fploopd.logs import configure_logging

    level = args.log_level if args.log_level.upper() != "INFO" else settings.log_level
    configure_logging(level=level, log_dir=Layout(settings.root).logs)


def run(args: argparse.Namespace) -> int:
    from fploopd.daemon.supervisor import run_daemon

    settings = settings_from(args)
    started = None
    if settings.http:
        from fploopd.web.server import serve_in_thread, web_address

        address = web_address(settings)  # refuses a non-loopback address without a token, before anything starts
        started = lambda supervisor: serve_in_thread(supervisor, address)
    configure_daemon_logging(args, settings)
    return run_daemon(settings, once=args.once, started=started)
