"""Run ``fploopd bench`` on a lent GPU machine without importing the other commands.

The device machine lacks some of the daemon's dependencies (PyAV); only the bench command's own
imports are needed, so this builds a parser with that one command. Usage (from the repo root):

    python3 tools/device_bench.py --model full-random --device cuda --out $OUT/bench.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fploopd.commands import bench
from fploopd.logs import configure_logging


def main() -> int:
    parser = argparse.ArgumentParser(prog="device_bench")
    sub = parser.add_subparsers(dest="command")
    bench.register(sub)
    args = parser.parse_args(["bench", *sys.argv[1:]])
    configure_logging("INFO")
    return args.handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
