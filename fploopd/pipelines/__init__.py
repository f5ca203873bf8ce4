"""The products: loop, connect, video2loop and plain image-to-video, over the engine.

``run_job`` is the single entry point the daemon and the one-shot commands use.
"""

from __future__ import annotations

from fploopd.pipelines.job import JobResult, OutputFile, Progress, pick_seeds, run_job

__all__ = ["JobResult", "OutputFile", "Progress", "pick_seeds", "run_job"]
