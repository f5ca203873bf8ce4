"""Where a job is: the ``Progress`` reports, their one-line text, and the ``Reporter`` that makes
them from the sampler's steps and honours a stop request between steps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fploopd.errors import Cancelled

# Receives each sampled section's latents (section, sections, generation, latents (1, 16, T, h, w) on
# the CPU), for a live preview; it must not keep the caller waiting.
SectionSink = Callable[[int, int, int, Any], None]

# The encoders a job runs once before sampling: the VAE (image or video sides), the text encoders,
# SigLIP. ``Reporter.encoded(k)`` counts them.
ENCODERS = 3


@dataclass(frozen=True)
class Progress:
    """Where a job is. Indices are 1-based; ``step`` 0 means the phase has just begun.

    Sampling fills ``section``/``step``; the other phases count their own work in ``done`` of
    ``total`` ``unit`` (encode: encoders run; decode: VAE windows decoded; write: files written).
    A finished job's last report is ``phase == "done"`` with every output file counted.
    """

    phase: str  # "encode" | "sample" | "decode" | "write" | "done"
    generation: int = 1
    generations: int = 1
    section: int = 0
    sections: int = 0
    step: int = 0
    steps: int = 0
    done: int = 0
    total: int = 0
    unit: str = ""


def progress_text(p: dict | None) -> str:
    """One line for a progress dict (``dataclasses.asdict(Progress)``): "sample section 2/3 step 5/25",
    "decode 3/8 windows", "write 1/2 files", "done"; "starting" before the first report."""
    if not p:
        return "starting"
    phase = str(p.get("phase") or "starting")
    if phase == "done":
        return "done"
    parts = [phase]
    if phase == "sample" and p.get("sections"):
        parts.append(f"section {p.get('section', 0)}/{p['sections']}")
        if p.get("steps"):
            parts.append(f"step {p.get('step', 0)}/{p['steps']}")
    elif p.get("total"):
        parts.append(f"{p.get('done', 0)}/{p['total']} {p.get('unit') or ''}".rstrip())
    if (p.get("generations") or 1) > 1:
        parts.append(f"(generation {p.get('generation', 1)}/{p['generations']})")
    return " ".join(parts)


@dataclass
class Reporter:
    """Turns sampler steps into ``Progress`` reports and honours a stop request between steps."""

    progress: Callable[[Progress], None] | None = None
    should_stop: Callable[[], bool] | None = None
    generation: int = 1
    generations: int = 1
    on_section: SectionSink | None = None

    def phase(self, name: str, section: int = 0, sections: int = 0) -> None:
        self.check_stop()
        if self.progress is not None:
            self.progress(Progress(name, self.generation, self.generations, section, sections))

    def count(self, phase: str, done: int, total: int, unit: str) -> None:
        """``done`` of ``total`` units of a phase that is not sampling (encoders, windows, files)."""
        if self.progress is not None:
            self.progress(Progress(phase, self.generation, self.generations, done=done, total=total, unit=unit))

    def begin_encode(self) -> None:
        self.check_stop()
        self.encoded(0)

    def encoded(self, done: int) -> None:
        self.count("encode", done, ENCODERS, "encoders")

    def section_done(self, section: int, sections: int, latents: Any) -> None:
        """A section's latents are sampled (already on the CPU): hand them to the preview, if any."""
        if self.on_section is not None:
            self.on_section(section, sections, self.generation, latents)

    def check_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Cancelled("stopped between steps; the last section checkpoint is kept")

    def step_hook(self, section: int, sections: int, steps: int) -> Callable[[int], None]:
        def on_step(i: int) -> None:
            if self.progress is not None:
                self.progress(Progress("sample", self.generation, self.generations, section, sections, i + 1, steps))
            self.check_stop()

        return on_step
