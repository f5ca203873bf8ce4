"""Sidecars (docs/design.md §3): read ``NAME.json``, validate it with ``JobSpec``, find the media it names.

Every problem is an ``InputError`` that names the sidecar, the field and what was expected, so the
user can fix the drop found in ``failed/<job>/``.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fploopd.daemon.files import file_kind
from fploopd.daemon.jsonfile import read_json_object
from fploopd.daemon.layout import is_temporary_name
from fploopd.daemon.names import NAME_MAX
from fploopd.daemon.profiles import DEFAULT_PROFILE, Profiles
from fploopd.daemon.validation import translate
from fploopd.errors import InputError
from fploopd.spec import MEDIA_FIELD_NAMES, MEDIA_FIELDS, PIPELINES, JobSpec, inapplicable_error, is_bare_name, media_of

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".m4v", ".avi")
MEDIA_KINDS = {f: IMAGE_EXTENSIONS if media_of(f).kind == "image" else VIDEO_EXTENSIONS for f in MEDIA_FIELD_NAMES}
# An omitted media field means the file named after the sidecar: cat.json -> cat.png; connect
# takes two, so it uses cat_head.mp4 and cat_tail.mp4.
DEFAULT_STEM_SUFFIX = {f: media_of(f).stem_suffix for f in MEDIA_FIELD_NAMES}


def read_sidecar(path: Path, max_bytes: int) -> dict[str, Any]:
    """The sidecar's JSON object (see ``read_json_object``)."""
    return read_json_object(path, max_bytes, label=path.name)


def effective_spec(raw: dict[str, Any], sidecar: Path, folder_pipeline: str | None, profiles: Profiles) -> JobSpec:
    """The job's full spec: profile values, then the sidecar's own, with the pipeline decided."""
    name = sidecar.name
    given = raw.get("pipeline")
    if folder_pipeline is not None and given is not None and given != folder_pipeline:
        raise InputError(
            f"{name}: pipeline {json.dumps(given)} disagrees with the folder inbox/{folder_pipeline}/ "
            f"(drop it in inbox/{given}/ or remove the key)",
            field="pipeline",
            file=name,
        )
    pipeline = folder_pipeline or given
    _check_key_count(raw, name)
    own = validate(raw, name)
    if pipeline is None:
        raise InputError(
            f"{name}: missing key 'pipeline' (one of {', '.join(PIPELINES)}): it is required for sidecars "
            "directly in inbox/; or drop into inbox/loop/, inbox/connect/ or inbox/video2loop/",
            field="pipeline",
            file=name,
        )
    # Only the sidecar's own keys: its profile sets every field, for every pipeline.
    if (unused := inapplicable_error(raw.keys(), pipeline, name)) is not None:
        raise unused
    profile_name = own.profile or DEFAULT_PROFILE
    values = profiles.values(profile_name, file=name)
    values.update(own.model_dump(exclude_unset=True))
    values["pipeline"] = pipeline
    return validate(values, name)


def _check_key_count(raw: dict[str, Any], name: str) -> None:
    """More keys than a spec has: say so in one short line (listing thousands of unknown keys would
    make an error.json nobody can read)."""
    if len(raw) <= len(JobSpec.model_fields):
        return
    unknown = [k for k in raw if k not in JobSpec.model_fields]
    shown = ", ".join(f"'{k[:40]}'" for k in unknown[:5])
    raise InputError(
        f"{name}: {len(raw)} keys, more than a sidecar has ({len(JobSpec.model_fields)}); "
        f"{len(unknown)} unknown keys, such as {shown}",
        field=unknown[0][:40],
        file=name,
    )


def validate(values: dict[str, Any], name: str) -> JobSpec:
    try:
        return JobSpec.model_validate(values)
    except ValidationError as exc:
        raise translate(exc, name) from None


@dataclass(frozen=True)
class MediaStatus:
    """Where each media field's file is, and what is still missing (field -> expected name)."""

    found: dict[str, Path]
    missing: dict[str, str]


def locate_media(spec: JobSpec, sidecar: Path) -> MediaStatus:
    """Find the media files of ``spec`` beside ``sidecar``; refuse links out, non-files, ambiguity."""
    assert spec.pipeline is not None
    folder = sidecar.parent
    found: dict[str, Path] = {}
    missing: dict[str, str] = {}
    for field in MEDIA_FIELDS[spec.pipeline]:
        given: str | None = getattr(spec, field)
        if given is not None:
            if given.lower().endswith(".json"):
                raise InputError(
                    f"{sidecar.name}: {field} '{given}' names a .json file, which is a sidecar, not media",
                    field=field,
                    file=sidecar.name,
                )
            if len(given.encode("utf-8")) > NAME_MAX:
                raise InputError(
                    f"{sidecar.name}: {field} '{given[:40]}...' is {len(given.encode('utf-8'))} bytes, "
                    f"longer than a file name can be ({NAME_MAX})",
                    field=field,
                    file=sidecar.name,
                )
            path = folder / given
            if not os.path.lexists(path):
                missing[field] = given
                continue
        else:
            stem = sidecar.stem + DEFAULT_STEM_SUFFIX[field]
            candidates = default_candidates(folder, stem, MEDIA_KINDS[field])
            if not candidates:
                missing[field] = f"{stem}{{{','.join(MEDIA_KINDS[field])}}}"
                continue
            if len(candidates) > 1:
                names = ", ".join(p.name for p in candidates)
                raise InputError(
                    f"{sidecar.name}: '{field}' is not given and several files match: {names}; name one with \"{field}\"",
                    field=field,
                    file=sidecar.name,
                )
            path = candidates[0]
        check_confined(path, folder, field, sidecar.name)
        found[field] = path
    return MediaStatus(found, missing)


def default_candidates(folder: Path, stem: str, extensions: tuple[str, ...]) -> list[Path]:
    try:
        entries = sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    return [
        folder / e
        for e in entries
        if not is_temporary_name(e) and os.path.splitext(e)[0] == stem and os.path.splitext(e)[1].lower() in extensions
    ]


def check_confined(path: Path, folder: Path, field: str, sidecar_name: str) -> None:
    """A media file must be a regular file in the sidecar's own folder; links may not lead out."""
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError) as exc:  # a link loop, a name too long for the system
        raise InputError(f"{sidecar_name}: {field} '{path.name}' cannot be followed ({exc})", field=field, file=path.name) from None
    if resolved.parent != folder.resolve():
        raise InputError(
            f"{sidecar_name}: {field} '{path.name}' is a link that leads out of the sidecar's folder (to {resolved})",
            field=field,
            file=path.name,
        )
    try:
        st = os.stat(path)  # follows a link, like resolve(), but reports what the daemon will open
    except OSError as exc:
        raise InputError(f"{sidecar_name}: {field} '{path.name}' cannot be read ({exc.strerror})", field=field, file=path.name) from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(
            f"{sidecar_name}: {field} '{path.name}' is not a regular file ({file_kind(st.st_mode)})", field=field, file=path.name
        )
    if os.path.islink(path):
        # A link to a file beside it: claiming would move the link and break it. Keep it simple.
        raise InputError(
            f"{sidecar_name}: {field} '{path.name}' is a symbolic link; drop the file itself", field=field, file=path.name
        )


def companions_of_bad_sidecar(sidecar: Path, raw: dict[str, Any] | None) -> list[Path]:
    """Files that go to failed/ with a sidecar that did not validate (docs/design.md §3).

    The media it names (bare names of files or links beside it); failing that, the files sharing
    its stem. Never a folder, never anything outside its folder.
    """
    folder = sidecar.parent
    named: list[Path] = []
    if raw is not None:
        named = [folder / v for f in MEDIA_KINDS if isinstance(v := raw.get(f), str) and is_bare_name(v)]
        named = [p for p in named if p.suffix.lower() != ".json" and _takeable(p)]  # never another sidecar
    if not named:
        try:
            entries = sorted(os.listdir(folder))
        except FileNotFoundError:
            entries = []
        stems = {sidecar.stem + suffix for suffix in DEFAULT_STEM_SUFFIX.values()}
        named = [folder / e for e in entries if not is_temporary_name(e) and os.path.splitext(e)[0] in stems]
        named = [p for p in named if p != sidecar and p.suffix.lower() != ".json" and _takeable(p)]
    return list(dict.fromkeys(named))


def _takeable(path: Path) -> bool:
    """Regular files and links (the link itself moves, never its target); never a folder."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return False
    return stat.S_ISREG(mode) or stat.S_ISLNK(mode)
