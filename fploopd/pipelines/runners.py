"""The runner registry: which function runs a job of each pipeline.

A runner takes the job's context and its seeds and returns the files it wrote; each lives with its
pipeline (``loop.run_loop``, ...) and writes through ``writers``.
"""

from __future__ import annotations

from collections.abc import Callable

from fploopd.pipelines.connect import run_connect
from fploopd.pipelines.context import JobContext
from fploopd.pipelines.i2v import run_i2v
from fploopd.pipelines.loop import run_loop
from fploopd.pipelines.results import OutputFile
from fploopd.pipelines.video2loop import run_video2loop

Runner = Callable[[JobContext, list[int]], list[OutputFile]]

RUNNERS: dict[str, Runner] = {
    "loop": run_loop,
    "i2v": run_i2v,
    "connect": run_connect,
    "video2loop": run_video2loop,
}
