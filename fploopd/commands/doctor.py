"""``fploopd doctor``: checks what the daemon on this root would use (its fploopd.toml) and says what to fix."""

from __future__ import annotations

import argparse
import json

from fploopd.cli import add_journal_option, add_model_options, add_root_option


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check GPU, codecs, model sources, folders and permissions")
    add_root_option(p)
    add_model_options(p)
    add_journal_option(p)
    p.add_argument("--json", action="store_true", help="the checks as a JSON list")
    p.set_defaults(handler=run, model=None, device=None, vram=None, fp8=None, journal=None)


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from fploopd.daemon.doctor import report

    checks = _checks(args)
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
        return 1 if any(c.status == "fail" for c in checks) else 0
    return report(checks)


def _checks(args: argparse.Namespace) -> list:  # of doctor.Check, imported lazily
    """The checks on the settings the daemon would use: the root's fploopd.toml, FPLOOPD_* and the
    flags given. Settings it would refuse are the first failure; the rest is checked with the flags."""
    from fploopd.commands.run import settings_from
    from fploopd.daemon.doctor import run_checks, settings_failed
    from fploopd.daemon.settings import Settings, SettingsError

    try:
        return run_checks(settings_from(args))
    except SettingsError as exc:
        flags = {k: getattr(args, k) for k in ("model", "device", "vram", "fp8") if getattr(args, k) is not None}
        rest = [c for c in run_checks(Settings(root=args.root.absolute(), **flags)) if c.name != "settings"]
        return [settings_failed(exc.message), *rest]
