"""The job specification: one pydantic model for sidecars, profiles and the one-shot commands.

Every field is bounded; unknown keys are refused, so a typo such as ``promt`` is an error instead
of a silent fallback to a default. Defaults are FramePack's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fploopd.errors import InputError
from fploopd.lorafiles import suffix_problem

Pipeline = Literal["loop", "connect", "video2loop", "i2v"]
OutputKind = Literal["mp4", "webp", "gif", "prores", "png"]
PIPELINES: tuple[str, ...] = get_args(Pipeline)
_M = TypeVar("_M")


@dataclass(frozen=True)
class AppliesTo:
    """Field metadata: the pipelines that read the field. A field without it applies to every pipeline.

    Kept beside the field so that a new field or pipeline says it in one place; ``inapplicable``
    reads it to refuse settings that could not act (``loop_count`` on a connect job).
    """

    pipelines: tuple[str, ...]


@dataclass(frozen=True)
class Option:
    """Field metadata: the field is an option of the one-shot commands (``--main-sections``), with
    this help. A field without it is not one: the command decides it (``pipeline``), takes it as an
    argument (the media) or has no use for it (``priority``: a one-shot run has no queue)."""

    help: str


@dataclass(frozen=True)
class PathsOption(Option):
    """An ``Option`` that the one-shot commands add themselves (``--lora FILE[:SCALE]``), because
    it takes paths anywhere on disk where the sidecar field takes bare names; the generic option
    machinery (``add_spec_options``) leaves it out."""

    flag: str = ""
    metavar: str = ""


@dataclass(frozen=True)
class OutputOnly:
    """Field metadata: the field decides how results are written, not the latents, so a section
    checkpoint stays valid when it changes. (Not ``fps``: it decides which frames of a video are read.)"""


@dataclass(frozen=True)
class Media:
    """Field metadata: the field names a media file beside the sidecar, by bare file name.

    ``kind`` says which extensions the file may have; an omitted field means the file named
    ``<sidecar stem><stem_suffix>.<extension>``."""

    kind: Literal["image", "video"]
    stem_suffix: str = ""


LOOP_ONLY = AppliesTo(("loop",))
ONE_IMAGE = AppliesTo(("loop", "i2v"))  # a main video generated from the image
BRIDGED = AppliesTo(("loop", "connect", "video2loop"))  # a connection / bridge is generated
LOOPED = AppliesTo(("loop", "video2loop"))  # a 1-loop clip, so an N-loop file
OUTPUT_ONLY = OutputOnly()

# Bare file names only: no separators, nothing hidden (which also rules out "." and ".."), and no
# longer than a file name can be. ``is_bare_name`` and the media fields' pattern both use it.
_BARE_NAME = re.compile(r"^[^/\\\x00.][^/\\\x00]{0,254}$")
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
BareName = Annotated[str, Field(pattern=_BARE_NAME.pattern)]

MAX_SEED = 2**63 - 1
# LoRA bounds, shared with the engine's LoRA core (``engine.lora`` / ``engine.lora_merge``), which
# takes them from here so that this module stays free of torch.
MAX_LORAS = 8  # per job: more is almost surely a mistake, and each costs merge time
MAX_LORA_SCALE = 10.0  # musubi and FramePackLoop users stay within about +-2; beyond 10 is a typo
# FramePack's TeaCache threshold, what ``"teacache": true`` means.
TEACACHE_DEFAULT_THRESHOLD = 0.15


def is_bare_name(name: str) -> bool:
    """A plain file name: not empty, no folder separators or NUL, not hidden (so not "." or ".."),
    at most 255 characters. Media fields, job names and stored names are all checked by this."""
    return _BARE_NAME.fullmatch(name) is not None


class LoraSetting(BaseModel):
    """One LoRA of a job: a ``.safetensors`` file in the root's ``loras/`` folder, by bare name, and
    its strength."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    file: BareName
    scale: Annotated[float, Field(ge=-MAX_LORA_SCALE, le=MAX_LORA_SCALE)] = 1.0

    @field_validator("file")
    @classmethod
    def _safetensors_only(cls, value: str) -> str:
        if (problem := suffix_problem(value)) is not None:
            raise ValueError(f"{value}: {problem}")
        return value


class GenerationSettings(BaseModel):
    """Settings a profile may set and a sidecar may override (a profile holds these fields only).

    Each field carries its facts beside its type and bounds: the pipelines that read it
    (``AppliesTo``), its one-shot option (``Option``), whether it leaves the latents alone
    (``OUTPUT_ONLY``). The rest of fploopd derives from them, never restates them.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    main_sections: Annotated[
        int, Field(ge=1, le=32), ONE_IMAGE, Option("length of the main video in sections (window*4 frames each)")
    ] = 1
    connection_sections: Annotated[
        int, Field(ge=1, le=16), BRIDGED, Option("length of the connection / bridge in sections")
    ] = 1
    padding_sections: Annotated[
        int, Field(ge=0, le=8), LOOP_ONLY, Option("extra blank windows before the main video starts")
    ] = 0
    loop_count: Annotated[
        int, Field(ge=1, le=100), LOOPED, OUTPUT_ONLY, Option("how many loops the N-loop file repeats")
    ] = 1
    steps: Annotated[int, Field(ge=1, le=100), Option("sampling steps per section")] = 25
    distilled_guidance: Annotated[float, Field(ge=1.0, le=32.0), Option("FramePack's distilled guidance scale")] = 10.0
    cfg: Annotated[
        float, Field(ge=1.0, le=32.0), Option("real classifier-free guidance (1 = off, one model pass per step)")
    ] = 1.0
    cfg_rescale: Annotated[float, Field(ge=0.0, le=1.0), Option("std rescale of the guided prediction, 0..1")] = 0.0
    negative_prompt: Annotated[str, Field(max_length=2000), Option("what should not (used only when --cfg > 1)")] = ""
    resolution: Annotated[
        int,
        Field(ge=64, le=1280, multiple_of=16),
        Option("bucket family size: 640 is FramePack's; smaller multiples of 16 for quick runs"),
    ] = 640
    window: Annotated[int, Field(ge=1, le=33), Option("latents per section")] = 9
    # false = off, true = FramePack's threshold (TEACACHE_DEFAULT_THRESHOLD), a number = that threshold;
    # ``teacache_threshold`` is the one conversion to what the transformer takes.
    teacache: Annotated[
        bool | Annotated[float, Field(gt=0.0, le=1.0)],
        Option(f"off, on (threshold {TEACACHE_DEFAULT_THRESHOLD:g}) or a threshold in (0, 1]"),
    ] = False
    crf: Annotated[int, Field(ge=0, le=51), OUTPUT_ONLY, Option("H.264 quality, lower is better")] = 16
    fps: Annotated[
        int, Field(ge=1, le=120), Option("frame rate of the outputs, and the rate input videos are read at")
    ] = 30
    # false: latents only, decoded later (`fploopd decode`)
    decode: Annotated[
        bool, LOOP_ONLY, OUTPUT_ONLY, Option("decode to video (--no-decode: save latents only; loop pipeline)")
    ] = True
    outputs: Annotated[
        list[OutputKind],
        Field(min_length=1, max_length=5),
        OUTPUT_ONLY,
        Option("comma list of mp4, webp, gif, prores, png"),
    ] = ["mp4"]
    count: Annotated[int, Field(ge=1, le=100), OUTPUT_ONLY, Option("generations, each with its own seed")] = 1
    consecutive_seeds: Annotated[
        bool, OUTPUT_ONLY, Option("seed, seed+1, ... instead of random seeds after the first")
    ] = False
    priority: Annotated[int, Field(ge=-100, le=100), OUTPUT_ONLY] = 0
    # [] = none. A sidecar's list replaces its profile's (as every setting does). The checkpoint key
    # and the model identity carry each file's sha256 too (``Components.apply_loras``).
    loras: Annotated[
        list[LoraSetting],
        Field(max_length=MAX_LORAS),
        PathsOption(
            f"a LoRA file (.safetensors, any path) merged at SCALE (default 1.0); repeatable, at most {MAX_LORAS}; "
            "replaces the profile's loras",
            flag="--lora",
            metavar="FILE[:SCALE]",
        ),
    ] = []

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

    prompt: Annotated[str, Field(max_length=4000), Option("what should happen in the video (default: empty)")]
    pipeline: Pipeline | None = None
    profile: Annotated[
        Annotated[str, Field(pattern=_PROFILE_NAME.pattern)] | None,
        OUTPUT_ONLY,
        Option("a profile: <root>/profiles/NAME.json or a shipped preset (default: default)"),
    ] = None
    seed: Annotated[
        Annotated[int, Field(ge=0, le=MAX_SEED)] | None,
        OUTPUT_ONLY,  # the checkpoint key names the generation's own seed
        Option("the first generation's seed (default: random)"),
    ] = None
    image: Annotated[BareName | None, ONE_IMAGE, Media("image")] = None
    video: Annotated[BareName | None, AppliesTo(("video2loop",)), Media("video")] = None
    # connect takes two videos, so an omitted one is cat_head.mp4 / cat_tail.mp4 beside cat.json.
    head: Annotated[BareName | None, AppliesTo(("connect",)), Media("video", "_head")] = None
    tail: Annotated[BareName | None, AppliesTo(("connect",)), Media("video", "_tail")] = None
    tags: Annotated[
        list[Annotated[str, Field(max_length=64)]], Field(max_length=16), OUTPUT_ONLY, Option("comma list of labels")
    ] = []

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
        # A profile may set decode: false for every pipeline; only those that read it may keep it.
        readers = pipelines_of("decode")
        if not self.decode and self.pipeline not in (None, *readers):
            raise ValueError(
                f"decode: false (latents only) is for the {', '.join(readers)} pipeline, not {self.pipeline}"
            )
        return self

    @model_validator(mode="after")
    def _media_fields_fit_pipeline(self) -> JobSpec:
        if self.pipeline is None:
            return self
        allowed = MEDIA_FIELDS[self.pipeline]
        for name in MEDIA_FIELD_NAMES:
            if getattr(self, name) is not None and name not in allowed:
                raise ValueError(f"{name}: not used by the {self.pipeline} pipeline (it takes {', '.join(allowed)})")
        return self

    def latent_settings(self) -> dict[str, Any]:
        """The fields that decide the latents (every field not ``OUTPUT_ONLY``): a section
        checkpoint's key, so changing ``crf`` or ``outputs`` keeps the checkpoints."""
        return self.model_dump(exclude=set(OUTPUT_ONLY_FIELDS))


# --- what the field metadata says, for the rest of fploopd -------------------------------------


def _marker(field: str, kind: type[_M]) -> _M | None:
    return next((m for m in JobSpec.model_fields[field].metadata if isinstance(m, kind)), None)


def pipelines_of(field: str) -> tuple[str, ...]:
    """The pipelines that read ``field`` (every pipeline unless the field says otherwise)."""
    applies = _marker(field, AppliesTo)
    return applies.pipelines if applies is not None else PIPELINES


def media_of(field: str) -> Media | None:
    """The media facts of ``field`` (kind, default file stem), or None when it names no file."""
    return _marker(field, Media)


def option_of(field: str) -> Option | None:
    """The one-shot option of ``field``, or None when the one-shot commands take no such option."""
    return _marker(field, Option)


# The fields that name media files beside the sidecar, in the spec's order.
MEDIA_FIELD_NAMES: tuple[str, ...] = tuple(f for f in JobSpec.model_fields if media_of(f) is not None)
# Which media fields each pipeline reads, in order.
MEDIA_FIELDS: dict[str, tuple[str, ...]] = {
    p: tuple(f for f in MEDIA_FIELD_NAMES if p in pipelines_of(f)) for p in PIPELINES
}
# Fields that change only how results are written, not the latents a checkpoint holds.
OUTPUT_ONLY_FIELDS: tuple[str, ...] = tuple(f for f in JobSpec.model_fields if _marker(f, OutputOnly) is not None)
# The fields a profile may hold: the generation settings.
SETTINGS_FIELDS: tuple[str, ...] = tuple(GenerationSettings.model_fields)


def default_settings() -> dict[str, Any]:
    """Every generation setting at its default, as JSON values: what ``presets/default.json`` holds."""
    return GenerationSettings().model_dump(mode="json")


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
        f"{label(k)} is not used by the {pipeline} pipeline (it applies to {', '.join(pipelines_of(k))})"
        for k in unused
    ]
    prefix = f"{file}: " if file else ""
    return InputError(prefix + "; ".join(reasons), field=unused[0], file=file)
