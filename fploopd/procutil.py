"""Process life cycle shared by the daemon's workers and a device group's followers."""

from __future__ import annotations

import signal
import sys


def die_with_parent() -> None:
    """Linux: the kernel kills this process when its parent dies (PR_SET_PDEATHSIG), so a SIGKILLed
    daemon never leaves a worker writing into a job that the next daemon resumes, nor a worker its
    followers holding a GPU."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
