"""Test hooks. ``FPLOOPD_TEST_CRASH_AT=claim:after_journal`` makes the daemon SIGKILL its whole
process group (supervisor and workers) at that crash point, so the crash is real.

``FPLOOPD_TEST_FAIL_AT=run:NAME`` makes the worker raise an unexpected error when it starts the job
named NAME (a bug, a driver error), which replaces the worker process.

``FPLOOPD_TEST_STEP_DELAY_S=0.3`` slows every sampling step, so a test can stop a job mid-way.
Read at the moment of the check, never at import; unset in production, where a check is one
dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import sys
import time

ENV = "FPLOOPD_TEST_CRASH_AT"
FAIL_ENV = "FPLOOPD_TEST_FAIL_AT"
DELAY_ENV = "FPLOOPD_TEST_STEP_DELAY_S"


def crashpoint(name: str) -> None:
    if os.environ.get(ENV) != name:
        return
    print(f"fploopd: test crash at {name}", file=sys.stderr, flush=True)
    if hasattr(os, "killpg"):
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os._exit(137)


class TestFailure(RuntimeError):
    """The error ``failpoint`` raises: unexpected, as far as the daemon knows."""


def failpoint(name: str) -> None:
    if os.environ.get(FAIL_ENV) == name:
        raise TestFailure(f"test failure at {name}")


def step_delay() -> None:
    delay = os.environ.get(DELAY_ENV)
    if delay:
        time.sleep(float(delay))
