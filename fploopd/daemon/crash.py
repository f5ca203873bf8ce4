"""Test hooks. ``FPLOOPD_TEST_CRASH_AT=claim:after_journal`` makes the daemon SIGKILL its whole
process group (supervisor and workers) at that crash point, so the crash is real.

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
DELAY_ENV = "FPLOOPD_TEST_STEP_DELAY_S"


def crashpoint(name: str) -> None:
    if os.environ.get(ENV) != name:
        return
    print(f"fploopd: test crash at {name}", file=sys.stderr, flush=True)
    if hasattr(os, "killpg"):
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os._exit(137)


def step_delay() -> None:
    delay = os.environ.get(DELAY_ENV)
    if delay:
        time.sleep(float(delay))
