"""The live latent preview of a running job, written by its worker: ``progress/<job-name>.webp``.

The sampler hands each finished section's latents over (they are on the CPU already: the section
loop copies them there for its checkpoint, so the preview adds no device sync). A thread of its own
projects them to RGB (``latents_to_rgb``: a 16x3 matrix, no VAE) and rewrites the animation,
at most once every ``min_interval_s``: sampling never waits for it. ``close`` writes what is left
and returns when the file is complete, before the worker reports the job's end, so the supervisor
can move it into the job's folder.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from fploopd.media.preview import latents_to_rgb, save_animated_webp_atomic

MIN_INTERVAL_S = 1.0
# The animation shows at most the newest this many latents (4 video frames each: 32 s at 30 fps),
# so that rewriting it after each section stays cheap however long the job.
MAX_FRAMES = 240
CLOSE_TIMEOUT_S = 60.0


class LivePreview:
    def __init__(self, path: Path, min_interval_s: float = MIN_INTERVAL_S) -> None:
        self.path = Path(path)
        self.min_interval_s = min_interval_s
        self.frames: list[np.ndarray] = []
        self.pending: list[Any] = []  # sections' latents not drawn yet
        self.closed = False
        self.failed = False
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="live-preview", daemon=True)
        self.thread.start()

    def add(self, section: int, sections: int, generation: int, latents: Any) -> None:
        """The ``on_section`` sink of ``run_job``: called on the sampling thread, returns at once."""
        with self.cond:
            self.pending.append(latents)
            self.cond.notify()

    def close(self) -> None:
        """Write the sections not drawn yet and wait for the file (bounded: a stuck disk must not
        keep the job's end from being reported)."""
        with self.cond:
            self.closed = True
            self.cond.notify()
        self.thread.join(CLOSE_TIMEOUT_S)

    def _run(self) -> None:
        last = 0.0
        while True:
            with self.cond:
                while not self.pending and not self.closed:
                    self.cond.wait()
                if not self.pending:
                    return
                wait_s = last + self.min_interval_s - time.monotonic()
                if wait_s > 0 and not self.closed:
                    self.cond.wait(wait_s)  # throttled: more sections may arrive meanwhile
                    continue
                taken, self.pending = self.pending, []
            self._draw(taken)
            last = time.monotonic()

    def _draw(self, sections: list[Any]) -> None:
        try:
            for latents in sections:
                self.frames.extend(latents_to_rgb(latents))
            del self.frames[:-MAX_FRAMES]
            save_animated_webp_atomic(self.frames, self.path)
        except Exception as exc:  # noqa: BLE001 - a preview must never fail a job (a full disk, a gone share)
            if not self.failed:
                logger.warning("cannot write the live preview {}: {}", self.path, exc)
            self.failed = True
