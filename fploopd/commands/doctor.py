"""``fploopd doctor``: checks the GPU, codecs, model sources, folders and permissions; says what to fix."""

from __future__ import annotations

import argparse
import json

from fploopd.cli import add_model_options, add_root_option


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check GPU, codecs, model sources, folders and permissions")
    add_root_option(p)
    add_model_options(p)
    p.add_argument("--json", action="store_true", help="the checks as a JSON list")
    p.set_defaults(handler=run, model=None, device=None, vram=None, fp8=None)


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from fploopd.commands.run import settings_from
    from fploopd.daemon.doctor import report, run_checks

    checks = run_checks(settings_from(args))
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
        return 1 if any(c.status == "fail" for c in checks) else 0
    return report(checks)
