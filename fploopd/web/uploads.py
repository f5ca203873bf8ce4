"""``POST /api/jobs``: media uploaded with the sidecar's fields, written into the inbox by
``fploopd submit``'s code (media first, the sidecar last).

Nothing the browser sends becomes a path unchecked: an uploaded file keeps only its extension (one
of the media extensions intake knows) and a cleaned stem; the job name must be a plain name. Each
file is bounded by the media limits as it streams in. A sidecar that does not validate is refused
with intake's own error and still written into the inbox, so the daemon fails it like any bad drop,
into ``failed/<name>/`` with the media and ``error.json``: nothing uploaded is lost.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.datastructures import FormData, UploadFile

from fploopd.daemon.layout import Layout
from fploopd.daemon.sidecar import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from fploopd.daemon.submit import submit
from fploopd.errors import InputError
from fploopd.media.limits import MediaLimits
from fploopd.spec import PIPELINES

CHUNK = 1024 * 1024
FORM_OVERHEAD = 1024 * 1024  # the text fields and multipart framing around the files
MAX_FILES = 2  # connect's head and tail
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_ .+-]{0,79}")
# The form's own fields; every other sidecar field comes as JSON in "settings".
TEXT_FIELDS = ("prompt", "profile", "negative_prompt")
INT_FIELDS = ("seed", "priority")


def max_body(limits: MediaLimits) -> int:
    return MAX_FILES * max(limits.max_image_bytes, limits.max_video_bytes) + FORM_OVERHEAD


@dataclass(frozen=True)
class Submitted:
    sidecar: Path
    content: dict[str, Any]
    error: InputError | None  # the sidecar does not validate: intake fails the drop


def clean_stem(filename: str) -> str:
    stem = Path(filename.replace("\\", "/")).name.rsplit(".", 1)[0]
    stem = re.sub(r"[^A-Za-z0-9_ .+-]", "_", stem).strip(" .")[:80]
    return stem if NAME.fullmatch(stem) else "upload"


def form_fields(form: FormData) -> tuple[str | None, str | None, dict[str, Any]]:
    """(pipeline, name, sidecar fields) from the form's text fields."""
    pipeline = str(form.get("pipeline") or "").strip() or None
    if pipeline is not None and pipeline not in PIPELINES:
        raise InputError(f"pipeline {pipeline!r} is not one of {', '.join(PIPELINES)}", field="pipeline")
    name = str(form.get("name") or "").strip() or None
    if name is not None and not NAME.fullmatch(name):
        raise InputError(
            f"name {name!r}: use letters, digits, spaces and _ . + - (up to 80, not starting with . or -)", field="name"
        )
    fields: dict[str, Any] = {}
    raw = str(form.get("settings") or "").strip()
    if raw:
        try:
            extra = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InputError(f"settings must be a JSON object of sidecar fields: {exc}", field="settings") from None
        if not isinstance(extra, dict):
            raise InputError("settings must be a JSON object of sidecar fields", field="settings")
        fields.update(extra)
    for key in TEXT_FIELDS:
        value = form.get(key)
        if isinstance(value, str) and (value.strip() or key == "prompt"):
            fields[key] = value
    for key in INT_FIELDS:
        value = str(form.get(key) or "").strip()
        if value:
            try:
                fields[key] = int(value)
            except ValueError:
                raise InputError(f"{key} must be a whole number, got {value!r}", field=key) from None
    fields.setdefault("prompt", "")
    return pipeline, name, fields


def _save(upload: UploadFile, folder: Path, limits: MediaLimits) -> Path:
    """One uploaded file into ``folder`` under a clean name, bounded by the media limits."""
    suffix = Path((upload.filename or "").replace("\\", "/")).suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        bound = limits.max_image_bytes
    elif suffix in VIDEO_EXTENSIONS:
        bound = limits.max_video_bytes
    else:
        known = ", ".join(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
        raise InputError(f"{upload.filename!r} is not a media file fploopd reads ({known})", field="media", file=upload.filename)
    target = folder / f"{clean_stem(upload.filename or '')}{suffix}"
    written = 0
    upload.file.seek(0)
    with open(target, "wb") as out:
        while chunk := upload.file.read(CHUNK):
            written += len(chunk)
            if written > bound:
                raise InputError(f"{upload.filename!r} is larger than the limit of {bound} bytes", field="media", file=upload.filename)
            out.write(chunk)
    return target


def submit_upload(layout: Layout, form: FormData, limits: MediaLimits) -> Submitted:
    """Write the form's drop into the inbox; raises InputError for a form that cannot be a drop."""
    uploads = [v for v in form.getlist("media") if isinstance(v, UploadFile) and v.filename]
    if not uploads or len(uploads) > MAX_FILES:
        raise InputError(f"send 1 or {MAX_FILES} media files (an image, a video, or head and tail videos)", field="media")
    pipeline, name, fields = form_fields(form)
    layout.state.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="upload-", dir=layout.state))  # on the root's file system, private
    try:
        files = []
        for i, upload in enumerate(uploads):
            folder = staging / str(i)  # head and tail may share a file name
            folder.mkdir()
            files.append(_save(upload, folder, limits))
        name = name or files[0].stem
        try:
            sidecar, content = submit(layout, files, pipeline=pipeline, name=name, fields=fields)
            return Submitted(sidecar, content, None)
        except InputError as exc:
            if exc.field in ("pipeline", "media") or not files:
                raise  # not a drop at all: nothing was written
            sidecar, content = submit(layout, files, pipeline=pipeline, name=name, fields=fields, check=False)
            return Submitted(sidecar, content, exc)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # our own copies: the inbox holds the drop now
