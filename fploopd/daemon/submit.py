"""Dropping files into an inbox the safe way: media first under temporary names, then renamed,
the sidecar last and atomically (it is the commit marker, docs/design.md §3)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from fploopd.daemon.layout import PIPELINE_FOLDERS, Layout
from fploopd.daemon.profiles import Profiles
from fploopd.daemon.sidecar import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, effective_spec
from fploopd.errors import InputError
from fploopd.fsutil import atomic_path, write_json_atomic
from fploopd.spec import MEDIA_FIELDS


def guess_pipeline(files: list[Path]) -> str:
    """One image: loop; one video: video2loop; two videos: connect."""
    kinds = ["image" if f.suffix.lower() in IMAGE_EXTENSIONS else "video" if f.suffix.lower() in VIDEO_EXTENSIONS else "?" for f in files]
    guess = {("image",): "loop", ("video",): "video2loop", ("video", "video"): "connect"}.get(tuple(kinds))
    if guess is None:
        raise InputError(
            f"cannot tell the pipeline from {', '.join(f.name for f in files)}: give --pipeline "
            "(loop takes one image, video2loop one video, connect two videos: head then tail)",
            field="pipeline",
        )
    return guess


def _free_stem(folder: Path, stem: str, names: list[str]) -> str:
    """A stem such that none of ``names`` (formatted with it) exists in ``folder`` yet."""
    for n in range(1, 10_000):
        candidate = stem if n == 1 else f"{stem}-{n}"
        if not any(os.path.lexists(folder / name.format(stem=candidate)) for name in names):
            return candidate
    raise InputError(f"no free name for {stem!r} in {folder}")


def submit(
    layout: Layout, files: list[Path], *, pipeline: str | None, name: str | None, fields: dict[str, Any], check: bool = True
) -> tuple[Path, dict[str, Any]]:
    """Copy ``files`` into the inbox and write the sidecar; returns the sidecar path and content.

    ``check=False`` writes a drop whose sidecar does not validate all the same (the web page does,
    after telling the user why): intake then fails it like any bad drop, into failed/<name>/ with
    its media and error.json, so nothing uploaded is lost."""
    for f in files:
        if not f.is_file():
            raise InputError(f"{f} is not a file", file=str(f))
    pipeline = pipeline or guess_pipeline(files)
    wanted = MEDIA_FIELDS[pipeline]
    if len(files) != len(wanted):
        raise InputError(f"the {pipeline} pipeline takes {len(wanted)} file(s) ({', '.join(wanted)}), got {len(files)}", field="pipeline")
    folder = layout.inbox / pipeline if pipeline in PIPELINE_FOLDERS else layout.inbox
    folder.mkdir(parents=True, exist_ok=True)
    suffixes = {fld: ("" if len(wanted) == 1 else f"_{fld}") + f.suffix.lower() for fld, f in zip(wanted, files)}
    stem = _free_stem(folder, name or files[0].stem, ["{stem}.json", *(f"{{stem}}{s}" for s in suffixes.values())])
    sidecar = folder / f"{stem}.json"
    content: dict[str, Any] = {"prompt": "", **fields}
    if folder == layout.inbox:
        content["pipeline"] = pipeline
    content.update({fld: f"{stem}{suffixes[fld]}" for fld in wanted})
    # Validate now, so the user hears about a mistake before anything is copied.
    if check:
        effective_spec(content, sidecar, pipeline if folder != layout.inbox else None, Profiles(layout.profiles))
    for fld, src in zip(wanted, files):
        with atomic_path(folder / content[fld]) as part:  # a hidden .part name: ignored until renamed
            shutil.copyfile(src, part)
    write_json_atomic(sidecar, content)  # the sidecar last: the drop's commit marker
    return sidecar, content
