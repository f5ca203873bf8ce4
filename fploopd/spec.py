"""The job specification: one pydantic model for sidecars, profiles and the one-shot commands.

Every field is bounded; unknown keys are refused, so a typo such as ``promt`` is an error instead
of a silent fallback to a default. Defaults are FramePack's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fploopd.errors import InputError

Pipeline = Literal["loop", "connect", "video2loop", "i2v"]
OutputKind = Literal["mp4", "webp", "gif", "prores", "png"]
PIPELINES: tuple[str, ...] = get_args(Pipeline)


@dataclass(frozen=True)
class AppliesTo:
    """Field metadata: the pipelines that read the field. A field without it applies to every pipeline.

    Kept beside the field so that a new field or pipeline says it in one place; ``inapplicable``
    reads it to refuse settings that could not act (``loop_count`` on a connect job).
    """

    pipelines: tuple[str, ...]


LOOP_ONLY = AppliesTo(("loop",))
ONE_IMAGE = AppliesTo(("loop", "i2v"))  # a main video generated from the image
BRIDGED = AppliesTo(("loop", "connect", "video2loop"))  # a connection / bridge is generated
LOOPED = AppliesTo(("loop", "video2loop"))  # a 1-loop clip, so an N-loop file

# Bare file names only: no separators, nothing hidden (which also rules out "." and "..").
_BARE_NAME = re.compile(r"^[^/\\\x00.][^/\\\x00]{0,254}$")
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

MAX_SEED = 2**63 - 1
DEFAULT_SEED = 31337
TEACACHE_DEFAULT_THRESHOLD = 0.15


class GenerationSettings(BaseModel):
    """Settings a profile may set and a sidecar may override."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    main_sections: Annotated[int, Field(ge=1, le=32), ONE_IMAGE] = 1
    connection_sections: Annotated[int, Field(ge=1, le=16), BRIDGED] = 1
    padding_sections: Annotated[int, Field(ge=0, le=8), LOOP_ONLY] = 0
    loop_count: Annotated[int, Field(ge=1, le=100), LOOPED] = 1
    steps: Annotated[int, Field(ge=1, le=100)] = 25
    distilled_guidance: Annotated[float, Field(ge=1.0, le=32.0)] = 10.0
    cfg: Annotated[float, Field(ge=1.0, le=32.0)] = 1.0
    cfg_rescale: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    negative_prompt: Annotated[str, Field(max_length=2000)] = ""
    resolution: Annotated[int, Field(ge=64, le=1280, multiple_of=16)] = 640
    window: Annotated[int, Field(ge=1, le=33)] = 9
    # false = off, true = FramePack's threshold (0.15), a number = that threshold.
    teacache: bool | Annotated[float, Field(gt=0.0, le=1.0)] = False
    crf: Annotated[int, Field(ge=0, le=51)] = 16
    fps: Annotated[int, Field(ge=1, le=120)] = 30
    decode: Annotated[bool, LOOP_ONLY] = True  # false: latents only, decoded later (`fploopd decode`)
    outputs: Annotated[list[OutputKind], Field(min_length=1, max_length=5)] = ["mp4"]
    count: Annotated[int, Field(ge=1, le=100)] = 1
    consecutive_seeds: bool = False
    priority: Annotated[int, Field(ge=-100, le=100)] = 0

    @field_validator("outputs")
    @classmethod
    def _unique_outputs(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("outputs must not repeat a kind")
        return value

    @property
    def teacache_threshold(self) -> float | None:
        if self.teacache is False:
            return None
        if self.teacache is True:
            return TEACACHE_DEFAULT_THRESHOLD
        return float(self.teacache)


class JobSpec(GenerationSettings):
    """A complete job: what to make, from which files, with which settings."""

    prompt: Annotated[str, Field(max_length=4000)]
    pipeline: Pipeline | None = None
    profile: Annotated[str, Field(pattern=_PROFILE_NAME.pattern)] | None = None
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None
    image: Annotated[Annotated[str, Field(pattern=_BARE_NAME.pattern)] | None, ONE_IMAGE] = None
    video: Annotated[Annotated[str, Field(pattern=_BARE_NAME.pattern)] | None, AppliesTo(("video2loop",))] = None
    head: Annotated[Annotated[str, Field(pattern=_BARE_NAME.pattern)] | None, AppliesTo(("connect",))] = None
    tail: Annotated[Annotated[str, Field(pattern=_BARE_NAME.pattern)] | None, AppliesTo(("connect",))] = None
    tags: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=16)] = []

    @model_validator(mode="after")
    def _loop_has_room_for_its_connection(self) -> JobSpec:
        # The connection's context needs 1 + 2 + at least one 4x latent from the main video.
        if self.pipeline == "loop" and self.main_sections * self.window < 4:
            raise ValueError(
                f"main_sections: a loop needs main_sections x window >= 4 latents for its connection, "
                f"got {self.main_sections} x {self.window}"
            )
        return self

    @model_validator(mode="after")
    def _latent_only_is_for_loops(self) -> JobSpec:
        if not self.decode and self.pipeline not in (None, "loop"):
            raise ValueError(f"decode: false (latents only) is for the loop pipeline, not {self.pipeline}")
        return self

    @model_validator(mode="after")
    def _media_fields_fit_pipeline(self) -> JobSpec:
        allowed = MEDIA_FIELDS.get(self.pipeline) if self.pipeline else None
        if allowed is None:
            return self
        for name in MEDIA_FIELD_NAMES:
            if getattr(self, name) is not None and name not in allowed:
                raise ValueError(f"{name}: not used by the {self.pipeline} pipeline (it takes {', '.join(allowed)})")
        return self


# The fields that name media files beside the sidecar.
MEDIA_FIELD_NAMES = ("image", "video", "head", "tail")
# Which media fields each pipeline reads, in order.
MEDIA_FIELDS: dict[str, tuple[str, ...]] = {
    "loop": ("image",),
    "i2v": ("image",),
    "connect": ("head", "tail"),
    "video2loop": ("video",),
}

SETTINGS_FIELDS = tuple(GenerationSettings.model_fields)


def pipelines_of(field: str) -> tuple[str, ...]:
    """The pipelines that read ``field`` (every pipeline unless the field says otherwise)."""
    for meta in JobSpec.model_fields[field].metadata:
        if isinstance(meta, AppliesTo):
            return meta.pipelines
    return PIPELINES


def inapplicable(keys: Iterable[str], pipeline: str) -> list[str]:
    """The given keys that ``pipeline`` does not use, in the order given. Unknown keys are left to
    the spec's own validation, which refuses them."""
    return [k for k in keys if k in JobSpec.model_fields and pipeline not in pipelines_of(k)]


def inapplicable_error(
    keys: Iterable[str], pipeline: str, file: str | None, label: Callable[[str], str] = str
) -> InputError | None:
    """An InputError naming each key ``pipeline`` would ignore, or None when every key acts:
    "cat.json: loop_count is not used by the connect pipeline (it applies to loop, video2loop)".

    Give it only the keys a sidecar (or a command line) set itself: a profile sets every field.
    ``label`` names a field as the user wrote it (``--loop-count`` on a command line).
    """
    unused = inapplicable(keys, pipeline)
    if not unused:
        return None
    reasons = [
        f"{label(k)} is not used by the {pipeline} pipeline (it applies to {', '.join(pipelines_of(k))})" for k in unused
    ]
    prefix = f"{file}: " if file else ""
    return InputError(prefix + "; ".join(reasons), field=unused[0], file=file)
