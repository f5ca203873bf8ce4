"""``JobContext``: one running job's spec, inputs, model, folders and progress, as its pipeline's
runner sees them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from fploopd.engine.sections import Checkpoint, fingerprint
from fploopd.errors import InputError
from fploopd.fsutil import sha256_file
from fploopd.media.limits import MediaLimits
from fploopd.pipelines.progress import Progress, Reporter, SectionSink
from fploopd.pipelines.writers import Destination
from fploopd.spec import JobSpec

if TYPE_CHECKING:
    from fploopd.engine.components import Components


@dataclass
class JobContext:
    spec: JobSpec
    inputs: dict[str, Path]
    out_dir: Path
    name: str
    components: Components
    work_dir: Path
    progress: Callable[[Progress], None] | None = None
    should_stop: Callable[[], bool] | None = None
    limits: MediaLimits = field(default_factory=MediaLimits)
    known_hashes: dict[str, str] | None = None  # the caller hashed the inputs already
    on_section: SectionSink | None = None  # each sampled section's latents, for a live preview

    def reporter(self, generation: int, generations: int) -> Reporter:
        return Reporter(self.progress, self.should_stop, generation, generations, self.on_section)

    @property
    def destination(self) -> Destination:
        return Destination(self.out_dir, self.name, self.spec)

    @cached_property
    def input_hashes(self) -> dict[str, str]:
        known = self.known_hashes or {}
        return {k: known.get(k) or sha256_file(p) for k, p in sorted(self.inputs.items())}

    def checkpoint(self, seed: int) -> Checkpoint:
        """Section checkpoints are keyed by what decides the latents: the spec's latent settings,
        the seed, the inputs' hashes and the model (with its merged LoRAs' names, sha256 and scales)."""
        settings = self.spec.latent_settings()
        if not settings.get("loras"):  # LoRA-less jobs keep the keys they had before LoRAs existed
            settings.pop("loras", None)
        key = fingerprint(settings=settings, seed=seed, inputs=self.input_hashes, model=self.components.identity)
        return Checkpoint(self.work_dir / f"checkpoint-{seed}.safetensors", key)

    def input(self, field_name: str) -> Path:
        try:
            return self.inputs[field_name]
        except KeyError:
            raise InputError(
                f"the {self.spec.pipeline} pipeline needs a {field_name!r} file", field=field_name
            ) from None
